"""``memscale plan``: plan a recorded ModelGraph for a budget and print the plan.

Example:
    memscale plan --graph tests/data/graphs/gpt2_small_train.json --budget 8GiB \\
        --hardware tests/data/hardware/gpu_24gib.json
    memscale plan --graph g.json --budget 0.8 --json > plan.json
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--graph", required=True, help="ModelGraph JSON file (memscale.profile(...).to_json())")
    parser.add_argument("--budget", help='memory budget per device: bytes (4294967296), a size ("4GiB", "512MB") '
                                         "or a share of device memory (0.8); overrides --config's memory_budget")
    parser.add_argument("--hardware", help="Hardware JSON file (default: detect this machine)")
    parser.add_argument("--config", help="Config JSON file (docs/config.md)")
    parser.add_argument("--mode", choices=["auto", "off", "min_memory"], help="overrides --config's mode")
    parser.add_argument("--json", action="store_true", help="print the plan JSON instead of the summary table")
    parser.add_argument("--html", help="also draw the plan into this HTML page (PNGs beside it): the step's "
                                       "memory timeline before and after the plan (training), the per-layer "
                                       "chart and every decision's rule and reason")


def parse_budget(text: str) -> Any:
    """'4GiB' -> '4GiB', '4096' -> 4096, '0.8' -> 0.8 (the Config validates each form)."""
    text = text.strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    if re.fullmatch(r"\d*\.\d+", text):
        return float(text)
    return text


def run(args: argparse.Namespace) -> int:
    from ..config import Config
    from ..planning import _hardware, plan, plan_timeline
    from ..timeline import timeline_record

    settings: dict[str, Any] = json.loads(Config.from_json(args.config).to_json()) if args.config else {}
    if args.budget is not None:
        settings["memory_budget"] = parse_budget(args.budget)
    if args.mode is not None:
        settings["mode"] = args.mode
    cfg, hardware = Config(**settings), _hardware(args.hardware)
    result = plan(args.graph, cfg, hardware=hardware)
    sys.stdout.write(result.to_json() + "\n" if args.json else result.summary())
    if args.html:
        from ..report import write_plan_report

        timeline = timeline_record(plan_timeline(args.graph, result, cfg, hardware)) if result.training else None
        write_plan_report(result.to_json(), args.html, timeline)
    return 0
