"""The runtime: applies a Plan to a model and never decides anything itself.

``training/`` applies per-layer techniques (checkpoint, activation offload, tiling, the
fused head + loss) and verifies the first step; ``inference/`` pages weights, keeps the
KV cache on its tiers and generates. ``hooks`` is the one way either patches a model
and the one registry of wrapped models.
"""
