"""Offloaded generation of HF Llama / GPT-2 / Qwen2 at 0.4x and 0.25x of their weight bytes:
memscale's pager vs Accelerate's disk_offload and device_map="auto" with max_memory, page
cache dropped and kept (both in every run).

    python benchmarks/offload_inference.py [--quick] [--out FILE] [--threads N] [--families llama,gpt2]

The scenario lives in ``memscale.bench.scenarios.offload_inference`` (so ``memscale bench``
can run it too); this script is its command-line entry point.
"""
from memscale.bench.scenarios.offload_inference import main

if __name__ == "__main__":
    raise SystemExit(main())
