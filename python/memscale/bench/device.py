"""The device a scenario measures on: ``--device auto|cpu|cuda``.

``auto`` is CUDA when torch sees a GPU, else the CPU. On CUDA the peaks come from the
caching allocator's statistics and step times are taken after a synchronize; on the CPU
from the counting allocator and the wall clock, as everywhere in the suite.
"""
from __future__ import annotations

import time

import torch

CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """The torch device for ``--device NAME``; a clear error when CUDA is asked for and absent."""
    from ..errors import ConfigError

    if name not in CHOICES:
        raise ConfigError(f"--device: {name!r} is not one of {', '.join(CHOICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device: 'cuda' asked for, but torch sees no CUDA device")
    return torch.device(name)


def device_label(device: torch.device) -> str:
    """What a record names as its device: the GPU's name, or ``cpu``."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def fresh_device_state(device: torch.device) -> None:
    """Before a measured scope on CUDA: empty the allocator's cache and release the BLAS
    workspaces, so the scope pays for everything its step allocates, as a fresh process
    would (the engine counts the workspace; see memscale.hardware.blas_workspace_bytes)."""
    if device.type != "cuda":
        return
    from ..hardware import release_blas_workspaces

    torch.cuda.synchronize(device)
    release_blas_workspaces()
    torch.cuda.empty_cache()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> float:
    """Wall-clock seconds after the device has finished the work queued so far."""
    synchronize(device)
    return time.perf_counter()
