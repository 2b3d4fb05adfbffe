"""``--device``: every scenario the runner starts accepts it, records say where they
measured, and a CUDA request without a GPU is a clear error."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from memscale.bench.device import resolve_device
from memscale.bench.registry import SCENARIOS
from memscale.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_scenario_accepts_the_device_option(name: str) -> None:
    module = SCENARIOS[name][0]
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--device" in done.stdout, f"{module} does not take --device (the runner passes it)"


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="--device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda")


def test_a_cpu_run_records_the_cpu_as_its_device(tmp_path) -> None:
    out = tmp_path / "lce.json"
    done = subprocess.run([sys.executable, "-m", "memscale.bench.scenarios.tiling_lce", "--quick", "--device", "cpu",
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    record = json.loads(out.read_text())["records"][0]
    assert record["device"] == "cpu"
    assert record["machine"]["gpu"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    assert record["ratios"]["grad_error_vs_untiled"] <= 2.0
