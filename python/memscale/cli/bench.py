"""``memscale bench``: run benchmark scenarios, write their records, check the goals."""
from __future__ import annotations

import argparse
import logging

log = logging.getLogger("memscale")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..bench.registry import SCENARIOS

    parser.add_argument("--quick", action="store_true", help="the small subset CI runs")
    parser.add_argument("--scenario", action="append", metavar="NAME",
                        help=f"run only these (repeatable); known: {', '.join(SCENARIOS) or 'none'}")
    parser.add_argument("--out", default=None, help="write all records to this JSON file")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the device-aware scenarios measure (auto: CUDA when torch sees a GPU)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a measured ratio misses its goal")
    parser.add_argument("--no-timing", action="store_true",
                        help="check only goals not marked timing (memory and accuracy): for busy or shared machines")
    parser.add_argument("--goals", default=None, help="goals file (default: memscale/bench/goals.json, shipped in the package)")
    parser.add_argument("--table", action="store_true",
                        help="regenerate README.md's results table from benchmarks/results/*.json and exit "
                             "(needs a MemScale checkout: run it inside one)")
    parser.add_argument("--from", dest="from_file", default=None,
                        help="check or rewrite the records of an existing results file instead of running")


def run(args: argparse.Namespace) -> int:
    from ..bench.goals import check, default_goals_path, load_goals
    from ..bench.records import read_records, write_records
    from ..bench.registry import resolve
    from ..bench.runner import run_scenarios

    if args.table:
        from ..bench.table import checkout_root, update_readme

        root = checkout_root()
        changed = update_readme(root / "README.md", root / "benchmarks" / "results")
        log.info("README.md results table %s", "updated" if changed else "already up to date")
        return 0
    if args.from_file:
        records = read_records(args.from_file)
        names = sorted({r.get("scenario") for r in records})
    else:
        names = resolve(args.scenario)
        records = run_scenarios(names, quick=args.quick, device=args.device)
    if args.out:
        write_records(args.out, records)
        log.info("wrote %d record(s) to %s", len(records), args.out)
    if not args.check:
        return 0
    results = check(records, load_goals(args.goals or default_goals_path()), scenarios=names, timing=not args.no_timing)
    if args.no_timing:
        log.info("--no-timing: wall-clock goals were not checked")
    for r in results:
        (log.info if r.passed else log.error)("%s %s", "PASS" if r.passed else "MISS", r.message)
    missed = [r for r in results if not r.passed]
    log.info("goals: %d checked, %d missed", len(results), len(missed))
    return 1 if missed else 0
