"""Profiling cost of a ~1.1B-parameter Llama-style model defined on the meta device.

    python benchmarks/profile_1b.py [--quick] [--out FILE]

The scenario lives in ``memscale.bench.scenarios.profile_1b`` (so ``memscale bench``
can run it, from an installed wheel too); this script is its command-line entry point.
"""
from memscale.bench.records import scenario_main
from memscale.bench.scenarios.profile_1b import run

if __name__ == "__main__":
    raise SystemExit(scenario_main(run))
