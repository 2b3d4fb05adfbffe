"""``memscale.detect_hardware()``: GPUs, host RAM (honouring cgroup limits), offload disk.

CUDA devices come from torch when it was built with CUDA; otherwise NVML is loaded at run
time with ctypes (``libnvidia-ml.so.1``) if present, so a CPU-only torch on a GPU machine
still sees the GPUs. Host memory is psutil's, capped by the cgroup v2 ``memory.max`` or
v1 ``memory.limit_in_bytes`` of this process when one is set.

Example:
    >>> from memscale.hardware import detect_hardware_dict
    >>> hw = detect_hardware_dict()
    >>> hw["host_total_bytes"] > 0
    True
"""
from __future__ import annotations

import ctypes
import itertools
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import psutil
import torch

log = logging.getLogger("memscale")

# Host memory that may be pinned when a GPU is present: half of what is available, so
# that page-locked buffers never starve the rest of the process and the OS.
PINNED_FRACTION = 0.5
# cgroup v1 reports "no limit" as a huge page-aligned number (2**63 rounded down to a page).
_V1_UNLIMITED = 1 << 62
_NVML_NAMES = ("libnvidia-ml.so.1", "libnvidia-ml.so")


def blas_workspace_bytes(index: int) -> int:
    """Bytes cuBLAS and cuBLASLt take from the caching allocator for one stream's workspace.

    Measured, because the size depends on the GPU generation, the torch version and
    ``CUBLAS_WORKSPACE_CONFIG``: products run on a fresh stream (the workspace is kept
    per stream), the probe's own tensors are freed, what stays allocated is the
    workspace. Then every workspace is released, so the training step that follows pays
    for its own inside whatever measures it, as in a fresh process.
    """
    device = torch.device("cuda", index)
    with torch.cuda.device(device):
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        stream = torch.cuda.Stream(device)
        with torch.cuda.stream(stream):
            a = torch.ones(64, 64, device=device)
            bias = torch.ones(64, device=device)
            outs = [torch.nn.functional.linear(a, a, bias), a @ a, torch.bmm(a[None], a[None])]  # Lt, mm, bmm
            del outs, a, bias
        stream.synchronize()
        workspace = torch.cuda.memory_allocated(device) - before
        release_blas_workspaces()
    return max(int(workspace), 0)


def release_blas_workspaces() -> None:
    """Free every cuBLAS/cuBLASLt workspace; the next product on a stream allocates its own."""
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()


def _cuda_devices_torch() -> list[dict[str, Any]]:
    devices = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        devices.append({"free_bytes": int(free), "index": i, "kind": "cuda",
                        "name": torch.cuda.get_device_name(i), "total_bytes": int(total),
                        "workspace_bytes": blas_workspace_bytes(i)})
    return devices


class _NvmlMemory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


def _cuda_devices_nvml(lib_names: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """GPUs through NVML loaded with ctypes; [] when the library is absent or fails."""
    lib = None
    for name in lib_names or _NVML_NAMES:  # read at call time: tests replace the names
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return []
    if lib.nvmlInit_v2() != 0:
        log.debug("NVML present but nvmlInit failed")
        return []
    devices = []
    try:
        count = ctypes.c_uint(0)
        if lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return []
        for i in range(count.value):
            handle = ctypes.c_void_p()
            if lib.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(handle)) != 0:
                continue
            name = ctypes.create_string_buffer(96)
            lib.nvmlDeviceGetName(handle, name, ctypes.c_uint(96))
            mem = _NvmlMemory()
            if lib.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(mem)) != 0:
                continue
            devices.append({"free_bytes": int(mem.free), "index": i, "kind": "cuda",
                            "name": name.value.decode(errors="replace"), "total_bytes": int(mem.total)})
    finally:
        lib.nvmlShutdown()
    return devices


def cuda_devices() -> list[dict[str, Any]]:
    """CUDA devices through torch if it has CUDA, else NVML, else none."""
    if torch.cuda.is_available():
        return _cuda_devices_torch()
    return _cuda_devices_nvml()


def _read_int(path: Path) -> int | None:
    """An integer from a cgroup file; None when absent, unreadable or ``max``."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max" or not text:
        return None
    try:
        return int(text)
    except ValueError:
        log.debug("unexpected content %r in %s", text, path)
        return None


def _own_cgroup_dirs(cgroup_root: Path, proc_cgroup: Path) -> tuple[list[Path], list[Path]]:
    """Candidate v2 and v1 memory-cgroup directories: this process's own (from
    /proc/self/cgroup), then the root of the mount (what a namespaced container sees)."""
    v2: list[Path] = []
    v1: list[Path] = []
    try:
        for line in proc_cgroup.read_text().splitlines():
            hier, _, rest = line.partition(":")
            controllers, _, rel = rest.partition(":")
            if not rel.startswith("/"):
                continue
            if hier == "0" and controllers == "":
                v2.append(cgroup_root / rel.lstrip("/"))
            elif "memory" in controllers.split(","):
                v1.append(cgroup_root / "memory" / rel.lstrip("/"))
    except OSError:
        pass
    return v2 + [cgroup_root], v1 + [cgroup_root / "memory"]


def cgroup_memory_limit(cgroup_root: str | os.PathLike = "/sys/fs/cgroup",
                        proc_cgroup: str | os.PathLike = "/proc/self/cgroup") -> tuple[int | None, int | None]:
    """(limit, usage) bytes of this process's memory cgroup; (None, None) without a limit."""
    v2, v1 = _own_cgroup_dirs(Path(cgroup_root), Path(proc_cgroup))
    for d in v2:
        limit = _read_int(d / "memory.max")
        if limit is not None:
            return limit, _read_int(d / "memory.current")
    for d in v1:
        limit = _read_int(d / "memory.limit_in_bytes")
        if limit is not None and limit < _V1_UNLIMITED:
            return limit, _read_int(d / "memory.usage_in_bytes")
    return None, None


def host_memory(cgroup_root: str | os.PathLike = "/sys/fs/cgroup",
                proc_cgroup: str | os.PathLike = "/proc/self/cgroup") -> tuple[int, int]:
    """(total, available) host RAM in bytes, capped by the cgroup limit when there is one."""
    vm = psutil.virtual_memory()
    total, available = int(vm.total), int(vm.available)
    limit, usage = cgroup_memory_limit(cgroup_root, proc_cgroup)
    if limit is not None and limit < total:
        total = limit
        available = min(available, max(0, limit - (usage or 0)))
        log.debug("cgroup memory limit %d bytes (usage %s)", limit, usage)
    return total, available


def disk_free(path: str | os.PathLike) -> int:
    """Free bytes of the filesystem holding ``path`` (its nearest existing ancestor)."""
    p = Path(path).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return int(shutil.disk_usage(p).free)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's tensors live: its first parameter's (or buffer's) device; CPU if none."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def detect_hardware_dict(offload_dir: str | os.PathLike | None = None, *,
                         device: torch.device | str | None = None,
                         cgroup_root: str | os.PathLike = "/sys/fs/cgroup",
                         proc_cgroup: str | os.PathLike = "/proc/self/cgroup") -> dict[str, Any]:
    """This machine in the Hardware JSON schema (docs/json-schema.md) as a plain dict.

    Args:
        offload_dir: directory of the disk tier (default: the system temp directory);
            it need not exist yet, the free space of its nearest existing ancestor is used.
        device: the device the model runs on, when known. A CPU model is planned for host
            RAM even on a machine with GPUs, so no GPU is reported for it.
        cgroup_root, proc_cgroup: where to read cgroup limits (overridable for tests).
    """
    if offload_dir is not None and not isinstance(offload_dir, (str, os.PathLike)):
        raise TypeError(f"offload_dir must be a path or None, got {offload_dir!r}")
    directory = str(offload_dir) if offload_dir is not None else tempfile.gettempdir()
    on_cpu = device is not None and torch.device(device).type == "cpu"
    devices = [] if on_cpu else cuda_devices()
    total, available = host_memory(cgroup_root, proc_cgroup)
    return {
        "devices": devices,
        "disk_read_bytes_per_s": 0,
        "disk_write_bytes_per_s": 0,
        "host_available_bytes": available,
        "host_to_device_bytes_per_s": 0,
        "host_total_bytes": total,
        "offload_dir": directory,
        "offload_dir_free_bytes": disk_free(directory),
        "pinned_limit_bytes": int(available * PINNED_FRACTION) if devices else 0,
    }


def detect_hardware(offload_dir: str | os.PathLike | None = None, *,
                    device: torch.device | str | None = None) -> Any:
    """Detected hardware as a ``memscale.Hardware`` (see :func:`detect_hardware_dict`)."""
    from . import _C

    return _C.Hardware.from_json(json.dumps(detect_hardware_dict(offload_dir, device=device), sort_keys=True))
