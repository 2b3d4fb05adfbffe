"""Estimate accuracy: predicted vs measured peak of one unoptimized training step.

    python benchmarks/estimate_accuracy.py [--quick] [--out FILE] [--device auto|cpu|cuda]

The scenario lives in ``memscale.bench.scenarios.estimate_accuracy`` (so ``memscale bench``
can run it, from an installed wheel too); this script is its command-line entry point.
"""
from memscale.bench.records import scenario_main
from memscale.bench.scenarios.estimate_accuracy import run

if __name__ == "__main__":
    raise SystemExit(scenario_main(run))
