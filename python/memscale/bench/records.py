"""Reading and writing benchmark result files: a JSON object ``{"records": [...]}``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def ratio_text(value: float) -> str:
    """A ratio as the table and the goal check print it: three decimals, or two significant
    digits when it is smaller than 0.01 (a difference of 3.1e-4 must not read as 0.000)."""
    if value != 0 and abs(value) < 0.01:
        return f"{value:.2g}"
    return f"{value:.3f}"


def write_records(path: str | Path, records: list[dict[str, Any]]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"records": records}, indent=2, sort_keys=True) + "\n")


def read_records(path: str | Path) -> list[dict[str, Any]]:
    from ..errors import ConfigError

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"results file {path}: cannot read ({error})") from error
    records = data.get("records") if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise ConfigError(f"results file {path}: expected an object with a 'records' array")
    return records


def scenario_main(run: Any, argv: list[str] | None = None) -> int:
    """``python -m memscale.bench.scenarios.NAME [--quick] [--out FILE] [--device auto|cpu|cuda]``.

    A scenario whose ``run`` takes ``device`` measures there; the others (planning, meta
    profiling, the CPU pager scenarios) run on the CPU whatever is asked, and say so.
    """
    import argparse
    import inspect
    import logging

    import torch

    from .device import CHOICES, device_label, resolve_device

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="the small CI subset")
    parser.add_argument("--out", default=None, help="write the records to this JSON file")
    parser.add_argument("--device", choices=CHOICES, default="auto",
                        help="where to measure (auto: CUDA when available)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s: %(message)s")
    device = resolve_device(args.device)
    if "device" in inspect.signature(run).parameters:
        records = run(quick=args.quick, device=device)
    else:
        if device.type != "cpu":
            logging.getLogger("memscale").info("this scenario runs on the CPU only; --device %s ignored", args.device)
        device = torch.device("cpu")
        records = run(quick=args.quick)
    finish_records(records, quick=args.quick, device=device_label(device))
    if args.out:
        write_records(args.out, records)
    else:
        print(json.dumps({"records": records}, indent=2, sort_keys=True))
    return 0


def finish_records(records: list[dict[str, Any]], quick: bool, device: str) -> None:
    """Stamp the machine, the device measured on and the run size into every record."""
    from .machine import machine_info

    machine = machine_info()
    for record in records:
        record.setdefault("machine", machine)
        record.setdefault("device", device)
        record["quick"] = bool(quick)
