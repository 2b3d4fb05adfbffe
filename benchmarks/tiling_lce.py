"""Tiled linear-cross-entropy (32k vocabulary) vs untiled: peak, time ratio, gradients.

    python benchmarks/tiling_lce.py [--quick] [--out FILE]

The scenario lives in ``memscale.bench.scenarios.tiling_lce`` (so ``memscale bench``
can run it too); this script is its command-line entry point.
"""
from memscale.bench.records import scenario_main
from memscale.bench.scenarios.tiling_lce import run

if __name__ == "__main__":
    raise SystemExit(scenario_main(run))
