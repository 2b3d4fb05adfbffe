"""memscale.ContinuousScheduler against same-length batching and a fixed worst-case batch.

    python benchmarks/continuous_batching.py [--quick] [--out FILE]

The scenario lives in ``memscale.bench.scenarios.continuous_batching`` (so ``memscale bench``
can run it too); this script is its command-line entry point.
"""
from memscale.bench.records import scenario_main
from memscale.bench.scenarios.continuous_batching import run

if __name__ == "__main__":
    raise SystemExit(scenario_main(run))
