"""``profile(..., measure=True)``: one real step, per-layer measured peak and saved bytes.

A warm-up step (forward, backward, optimizer step) creates the optimizer state so that the
measured step looks like a steady-state one; the measured step's memory comes from
``memscale.track_memory`` (the counting allocator on CPU). Afterwards parameters, buffers,
gradients, the RNG state and train/eval flags are restored exactly; the optimizer is a
throwaway.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from ..memory import MemoryTracker, track_memory
from .discovery import LayerSpec
from .estimate import restore_mode, set_mode, target_device
from .recorder import StepRecorder, autocast_scope, backward_scope, step_loss
from .storage import storage_bytes, storage_key

log = logging.getLogger("memscale")


def make_optimizer(kind: str, params: list[nn.Parameter], impl: str = "default") -> torch.optim.Optimizer | None:
    """The torch optimizer matching a ModelGraph optimizer name (None for ``none``), stepping
    as ``impl`` says (default, foreach, per_tensor, fused)."""
    if kind == "none" or not params:
        return None
    step = {"default": {}, "foreach": {"foreach": True}, "per_tensor": {"foreach": False}, "fused": {"fused": True}}[impl]
    if kind == "sgd":
        return torch.optim.SGD(params, lr=1e-3, **step)
    if kind == "sgd_momentum":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9, **step)
    if kind == "adam":
        return torch.optim.Adam(params, lr=1e-3, **step)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=1e-3, **step)
    raise ValueError(f"optimizer must be one of none, sgd, sgd_momentum, adam, adamw; got {kind!r}")


class _TrackerView:
    """MemoryView over a track_memory scope, offset by the bytes resident when the step began."""

    def __init__(self, tracker: MemoryTracker, resident: int) -> None:
        self.tracker = tracker
        self.resident = resident

    def current(self) -> int:
        return self.resident + self.tracker.current_bytes

    def start_span(self) -> None:
        self.tracker.reset_peak()

    def span_peak(self) -> int:
        return self.resident + self.tracker.peak_bytes



@contextlib.contextmanager
def _restored(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Restore parameter and buffer values, gradients and the RNG state on exit."""
    params = list(model.parameters())
    buffers = list(model.buffers())
    with torch.no_grad():
        saved_p = [p.detach().clone() for p in params]
        saved_b = [b.detach().clone() for b in buffers]
    grads = [p.grad for p in params]
    for p in params:
        p.grad = None
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved_p):
                p.copy_(s)
            for b, s in zip(buffers, saved_b):
                b.copy_(s)
        for p, g in zip(params, grads):
            p.grad = g


def measure_step(model: nn.Module, args: tuple, kwargs: dict, specs: list[LayerSpec], training: bool,
                 optimizer: str, autocast: torch.dtype | None = None,
                 optimizer_impl: str = "default") -> list[tuple[int, int, int]]:
    """(measured peak bytes, measured saved bytes, measured scratch bytes) per spec, from one
    real step (forward and loss under ``torch.autocast(device, autocast)`` when given)."""
    if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
        raise ValueError("measure=True needs real parameters, but the model has tensors on the meta device")
    device = target_device(model, (args, kwargs))
    scope = (device.type, autocast) if autocast is not None else None
    inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    flags = set_mode(model, training)
    try:
        with _restored(model, device):
            opt = make_optimizer(optimizer, [p for p in model.parameters() if p.requires_grad],
                                 optimizer_impl) if training else None
            if training:  # warm-up: optimizer state exists during the measured step
                with autocast_scope(scope):
                    loss = step_loss(model(*args, **kwargs))
                if scope is not None:
                    torch.clear_autocast_cache()
                with backward_scope(scope):
                    loss.backward()
                del loss
                if opt is not None:
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                else:
                    model.zero_grad(set_to_none=True)
            state = [t for s in (opt.state.values() if opt else []) for t in s.values() if isinstance(t, torch.Tensor)]
            resident = storage_bytes(list(model.parameters()) + list(model.buffers()) + state + inputs)
            excluded = {storage_key(t) for t in list(model.parameters()) + list(model.buffers()) + inputs}
            with track_memory(device) as tracker:
                view = _TrackerView(tracker, resident)
                recorder = StepRecorder([s.module for s in specs], view, excluded, training)
                recorder.record_step(model, args, kwargs, autocast=scope)
                if opt is not None:
                    opt.step()
            del opt
    finally:
        restore_mode(flags)
    log.debug("measured one real step of %s on %s", type(model).__name__, device)
    return [(r.peak_abs, r.saved_bytes, max(r.fwd_scratch - r.retained_unsaved, r.bwd_scratch, 0))
            for r in recorder.records]
