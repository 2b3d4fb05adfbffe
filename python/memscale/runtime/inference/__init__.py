"""Offloaded inference: weight paging, tier placement (per tensor type), KV-cache generation.

``memscale.wrap(model, cfg, training=False)`` routes here; the functions are also public:

>>> from memscale.runtime.inference import wrap_for_inference, unwrap_inference, handle_of, generate
"""
from .generate import GenerationResult, generate
from .pager import OffloadHandle, handle_of, unwrap_inference, wrap_for_inference
from .tiers import TierPolicy, TierSplit, layer_tiers, tier_policy
from .units import PagingUnit, paging_units

__all__ = [
    "GenerationResult",
    "OffloadHandle",
    "PagingUnit",
    "TierPolicy",
    "TierSplit",
    "generate",
    "handle_of",
    "layer_tiers",
    "paging_units",
    "tier_policy",
    "unwrap_inference",
    "wrap_for_inference",
]
