"""What a benchmark ran on, recorded in every JSON record."""
from __future__ import annotations

import os
import platform
from typing import Any


def source_commit() -> str | None:
    """The commit of the checkout this memscale package was imported from (``PYTHONPATH=python``
    development), "+dirty" with local changes; None for an installed wheel, i.e. whenever the
    package's own files are not tracked by a git checkout (wherever the scenario runs)."""
    import subprocess
    from pathlib import Path

    package = Path(__file__).resolve().parents[1]

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=package, capture_output=True, text=True, timeout=10)

    try:
        # A wheel unpacked inside some other repository (a venv in a checkout) is not tracked there.
        if git("ls-files", "--error-unmatch", "__init__.py").returncode != 0:
            return None
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def machine_info() -> dict[str, Any]:
    import psutil
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    # The GPU the machine has, if any; each record's own "device" says where it measured.
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": gpu,
        "commit": source_commit(),
        "cuda": torch.version.cuda,
    }
