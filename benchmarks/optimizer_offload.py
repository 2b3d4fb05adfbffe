"""Optimizer-state / gradient offload (memscale.optim.offloaded) vs the resident AdamW.

    python benchmarks/optimizer_offload.py [--quick] [--out FILE] [--device auto|cpu|cuda]

The scenario lives in ``memscale.bench.scenarios.optimizer_offload`` (so ``memscale bench``
can run it too); this script is its command-line entry point.
"""
from memscale.bench.records import scenario_main
from memscale.bench.scenarios.optimizer_offload import run

if __name__ == "__main__":
    raise SystemExit(scenario_main(run))
