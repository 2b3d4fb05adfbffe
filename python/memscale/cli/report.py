"""``memscale report results.json``: an HTML page (and PNGs) of benchmark records."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", help="results JSON written by memscale bench --out")
    parser.add_argument("--html", default="report.html", help="output page (PNGs are written beside it)")


def run(args: argparse.Namespace) -> int:
    from ..bench.records import read_records
    from ..report import write_results_report

    write_results_report(read_records(args.results), args.html)
    return 0
