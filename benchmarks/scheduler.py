"""memscale.Scheduler on a simulated request stream vs a fixed worst-case batch size.

    python benchmarks/scheduler.py [--quick] [--out FILE]

The scenario lives in ``memscale.bench.scenarios.scheduler`` (so ``memscale bench`` can
run it too); this script is its command-line entry point.
"""
from memscale.bench.records import scenario_main
from memscale.bench.scenarios.scheduler import run

if __name__ == "__main__":
    raise SystemExit(scenario_main(run))
