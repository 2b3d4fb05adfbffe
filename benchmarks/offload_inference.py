"""Offloaded generation, weights 2.5x the budget: memscale's pager vs Accelerate's disk offload.

    python benchmarks/offload_inference.py [--quick] [--out FILE] [--page-cache drop|keep] [--threads N]

The scenario lives in ``memscale.bench.scenarios.offload_inference`` (so ``memscale bench``
can run it too); this script is its command-line entry point.
"""
from memscale.bench.scenarios.offload_inference import main

if __name__ == "__main__":
    raise SystemExit(main())
