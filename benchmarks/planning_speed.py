"""Planning speed of the decision engine for 10, 100, 1,000 and 10,000 layers.

    python benchmarks/planning_speed.py [--quick] [--out FILE]

The scenario lives in ``memscale.bench.scenarios.planning_speed`` (so ``memscale bench``
can run it, from an installed wheel too); this script is its command-line entry point.
"""
from memscale.bench.scenarios.planning_speed import main

if __name__ == "__main__":
    raise SystemExit(main())
