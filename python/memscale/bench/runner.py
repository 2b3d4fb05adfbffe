"""Runs scenarios, each in a fresh process so one scenario's allocations, threads and
imports cannot disturb another's measurements."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .records import read_records
from .registry import SCENARIOS

log = logging.getLogger("memscale")


def _child_environment() -> dict[str, str]:
    """This environment with PYTHONPATH's entries made absolute: a scenario runs in a scratch
    folder and must import the same memscale as this process (``PYTHONPATH=python`` too)."""
    env = dict(os.environ)
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    return env


def run_scenarios(names: list[str], quick: bool, device: str = "auto", timeout_s: float = 1800.0) -> list[dict[str, Any]]:
    from ..errors import MemScaleError
    from ..progress import progress_iter

    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="memscale-bench-") as tmp:
        for name in progress_iter(names, desc="memscale bench", unit="scenario", postfix=str):
            module, _ = SCENARIOS[name]
            out = Path(tmp) / f"{name}.json"
            command = [sys.executable, "-m", module, "--out", str(out), "--device", device] + (["--quick"] if quick else [])
            # cwd: the scratch folder, so no scenario depends on where bench was started (a checkout or not)
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=tmp,
                                  env=_child_environment())
            if done.returncode != 0:
                raise MemScaleError(f"scenario {name} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
            got = read_records(out)
            log.info("scenario %s: %d record(s)", name, len(got))
            records.extend(got)
    return records
