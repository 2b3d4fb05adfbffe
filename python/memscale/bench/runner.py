"""Runs scenarios, each in a fresh process so one scenario's allocations, threads and
imports cannot disturb another's measurements."""
from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .records import read_records
from .registry import SCENARIOS

log = logging.getLogger("memscale")


def repository_root() -> Path:
    """The checkout holding ``benchmarks/goals.json``: the current directory or a parent."""
    from ..errors import MemScaleError

    for folder in [Path.cwd(), *Path.cwd().parents]:
        if (folder / "benchmarks" / "goals.json").is_file():
            return folder
    raise MemScaleError(f"memscale bench: no benchmarks/goals.json in {Path.cwd()} or its parents; "
                        "run it inside a MemScale checkout (the scenarios live in benchmarks/)")


def run_scenarios(names: list[str], quick: bool, device: str = "auto", timeout_s: float = 1800.0) -> list[dict[str, Any]]:
    from tqdm import tqdm

    from ..errors import MemScaleError

    root = repository_root()
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="memscale-bench-") as tmp:
        bar = tqdm(names, desc="memscale bench", unit="scenario", file=sys.stderr)
        for name in bar:
            bar.set_postfix_str(name)
            module, _ = SCENARIOS[name]
            out = Path(tmp) / f"{name}.json"
            command = [sys.executable, "-m", module, "--out", str(out), "--device", device] + (["--quick"] if quick else [])
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=root)
            if done.returncode != 0:
                raise MemScaleError(f"scenario {name} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
            got = read_records(out)
            log.info("scenario %s: %d record(s)", name, len(got))
            records.extend(got)
    return records
