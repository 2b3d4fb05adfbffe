"""Reading and writing benchmark result files: a JSON object ``{"records": [...]}``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
    """``python -m memscale.bench.scenarios.NAME [--quick] [--out FILE]``."""
    import argparse
    import logging

    from .machine import machine_info

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="the small CI subset")
    parser.add_argument("--out", default=None, help="write the records to this JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s: %(message)s")
    records = run(quick=args.quick)
    machine = machine_info()
    for record in records:
        record.setdefault("machine", machine)
        record.setdefault("device", machine["device"])
        record["quick"] = bool(args.quick)
    if args.out:
        write_records(args.out, records)
    else:
        print(json.dumps({"records": records}, indent=2, sort_keys=True))
    return 0
