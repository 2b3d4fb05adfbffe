"""detect_hardware: no-GPU detection, cgroup v1/v2 limits from fake files, offload dir, JSON."""
import json
from pathlib import Path

import psutil
import pytest
import torch

import memscale
from memscale import hardware


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "_NVML_NAMES", ("libdefinitely-not-nvml.so.0",))


def _no_cgroup(tmp_path: Path) -> dict:
    proc = tmp_path / "proc_cgroup"
    proc.write_text("0::/\n")
    root = tmp_path / "cg"
    root.mkdir()
    return {"cgroup_root": root, "proc_cgroup": proc}


def test_no_gpu_reports_no_device_and_host_ram(no_gpu: None, tmp_path: Path) -> None:
    hw = hardware.detect_hardware_dict(tmp_path, **_no_cgroup(tmp_path))
    assert hw["devices"] == []
    assert hw["pinned_limit_bytes"] == 0
    vm = psutil.virtual_memory()
    assert hw["host_total_bytes"] == vm.total
    assert 0 < hw["host_available_bytes"] <= hw["host_total_bytes"]
    assert hw["offload_dir"] == str(tmp_path) and hw["offload_dir_free_bytes"] > 0


def test_schema_keys_and_binding_round_trip(no_gpu: None, tmp_path: Path) -> None:
    d = hardware.detect_hardware_dict(tmp_path)
    assert sorted(d) == sorted([
        "devices", "host_total_bytes", "host_available_bytes", "pinned_limit_bytes", "offload_dir",
        "offload_dir_free_bytes", "disk_read_bytes_per_s", "disk_write_bytes_per_s", "host_to_device_bytes_per_s"])
    hw = hardware.detect_hardware(tmp_path)
    assert isinstance(hw, memscale.Hardware)
    assert hw.gpu_count == 0 and hw.offload_dir == str(tmp_path)
    assert json.loads(hw.to_json())["devices"] == []


def test_cgroup_v2_limit_caps_total_and_available(no_gpu: None, tmp_path: Path) -> None:
    root = tmp_path / "cg"
    (root / "job.slice").mkdir(parents=True)
    (root / "job.slice" / "memory.max").write_text(f"{1 << 30}\n")
    (root / "job.slice" / "memory.current").write_text(f"{256 << 20}\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("0::/job.slice\n")
    assert hardware.cgroup_memory_limit(root, proc) == (1 << 30, 256 << 20)
    hw = hardware.detect_hardware_dict(tmp_path, cgroup_root=root, proc_cgroup=proc)
    assert hw["host_total_bytes"] == 1 << 30
    assert hw["host_available_bytes"] == min(psutil.virtual_memory().available, (1 << 30) - (256 << 20))


def test_cgroup_v2_max_means_no_limit(tmp_path: Path) -> None:
    kw = _no_cgroup(tmp_path)
    (kw["cgroup_root"] / "memory.max").write_text("max\n")
    assert hardware.cgroup_memory_limit(**kw) == (None, None)
    assert hardware.host_memory(**kw)[0] == psutil.virtual_memory().total


def test_cgroup_v1_limit_and_unlimited_marker(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    (root / "memory").mkdir(parents=True)
    proc = tmp_path / "proc_cgroup"
    proc.write_text("4:memory:/\n")
    (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert hardware.cgroup_memory_limit(root, proc) == (None, None)
    (root / "memory" / "memory.limit_in_bytes").write_text(f"{512 << 20}\n")
    (root / "memory" / "memory.usage_in_bytes").write_text(f"{100 << 20}\n")
    total, available = hardware.host_memory(root, proc)
    assert total == 512 << 20
    assert available == min(psutil.virtual_memory().available, (512 - 100) << 20)


def test_offload_dir_may_not_exist_yet_and_type_is_checked(no_gpu: None, tmp_path: Path) -> None:
    hw = hardware.detect_hardware_dict(tmp_path / "not" / "yet")
    assert hw["offload_dir_free_bytes"] > 0
    with pytest.raises(TypeError, match="offload_dir"):
        hardware.detect_hardware_dict(42)  # type: ignore[arg-type]


def test_missing_nvml_library_gives_no_devices() -> None:
    assert hardware._cuda_devices_nvml(("libdefinitely-not-nvml.so.0",)) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_devices_through_torch() -> None:
    hw = hardware.detect_hardware_dict()
    assert len(hw["devices"]) == torch.cuda.device_count()
    d = hw["devices"][0]
    assert d["kind"] == "cuda" and 0 < d["free_bytes"] <= d["total_bytes"]
    assert hw["pinned_limit_bytes"] > 0


def test_a_cpu_model_is_planned_for_host_ram_even_beside_a_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    gpu = {"free_bytes": 1 << 30, "index": 0, "kind": "cuda", "name": "fake", "total_bytes": 1 << 30,
           "workspace_bytes": 1 << 20}
    monkeypatch.setattr(hardware, "cuda_devices", lambda: [gpu])
    assert hardware.detect_hardware_dict(tmp_path)["devices"] == [gpu]
    assert hardware.detect_hardware_dict(tmp_path, device="cuda:0")["devices"] == [gpu]
    assert hardware.detect_hardware_dict(tmp_path, device="cpu")["devices"] == []
    assert hardware.detect_hardware(tmp_path, device=torch.device("cpu")).gpu_count == 0
    assert hardware.model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert hardware.model_device(torch.nn.ReLU()) == torch.device("cpu")
