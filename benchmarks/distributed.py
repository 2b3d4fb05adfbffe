"""GPT training under FSDP2 and DDP in 2 gloo processes at 60/40% of the per-rank peak vs
checkpoint-every-block: per-rank peak and step time.

    python benchmarks/distributed.py [--quick] [--out FILE]

The scenario lives in ``memscale.bench.scenarios.distributed`` (so ``memscale bench``
can run it too); this script is its command-line entry point.
"""
from memscale.bench.records import scenario_main
from memscale.bench.scenarios.distributed import run

if __name__ == "__main__":
    raise SystemExit(scenario_main(run))
