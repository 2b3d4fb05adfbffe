"""Estimate one training (or inference) step without allocating: FakeTensorMode + live tracking.

The user's module runs with fake stand-ins for its parameters and buffers, swapped in for
the duration of the run and swapped back afterwards as the very same objects (ties,
aliases and RNN weight lists included); no real parameter is read, moved or copied. Layer
hooks are removed and ``train()``/``eval()`` flags restored afterwards.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
    UnsupportedOperatorException,
)
from torch.utils._pytree import tree_leaves, tree_map_only

from ..progress import progress
from .discovery import LayerSpec
from .flops import op_flops
from .recorder import LayerRecord, StepRecorder
from .storage import storage_key
from .tracker import LiveTracker

log = logging.getLogger("memscale")


class _TrackerView:
    """MemoryView over a LiveTracker: the peak is sampled after every op (and inside probed kernels)."""

    def __init__(self, tracker: LiveTracker) -> None:
        self.tracker = tracker
        self.peak = 0

    def current(self) -> int:
        return self.tracker.live

    def start_span(self) -> None:
        self.peak = self.tracker.live

    def span_peak(self) -> int:
        return max(self.peak, self.tracker.live)

    def observe(self) -> None:
        # op_peak: the peak inside a probed kernel (its scratch is gone once it returns)
        self.peak = max(self.peak, self.tracker.live, self.tracker.op_peak or 0)


@dataclass
class Estimate:
    """Per-layer records (same order as the specs) and the first user of each orphan tensor."""

    records: list[LayerRecord]
    orphan_first_use: dict[int, int | None]  # id(real tensor) -> layer index, -2 prelude, None unused


def target_device(model: nn.Module, inputs: Any) -> torch.device:
    """Device the step would run on: the parameters' (unless meta), else the inputs', else CPU."""
    for t in list(model.parameters()) + list(model.buffers()) + [
            x for x in tree_leaves(inputs) if isinstance(x, torch.Tensor)]:
        if t.device.type != "meta":
            return t.device
    return torch.device("cpu")


def set_mode(model: nn.Module, training: bool) -> dict[nn.Module, bool]:
    """Put every submodule in train/eval mode; return the previous flags for :func:`restore_mode`."""
    flags = {m: m.training for m in model.modules()}
    model.train(training)
    return flags


def restore_mode(flags: dict[nn.Module, bool]) -> None:
    for m, f in flags.items():
        m.training = f


@contextlib.contextmanager
def swapped_state(model: nn.Module, stand_in: Callable[[torch.Tensor, bool], torch.Tensor]) -> Iterator[None]:
    """Replace every parameter and buffer of ``model`` by ``stand_in(tensor, is_param)``.

    Assignment goes through ``setattr`` so modules that mirror their weights elsewhere
    (``nn.RNNBase._flat_weights``) see the stand-ins; the originals are put back, in
    reverse order, as the same objects. (``torch.func.functional_call`` was not used: with
    a module registered under two names plus tied weights it restored a different object.)
    """
    swapped: list[tuple[nn.Module, str, torch.Tensor]] = []
    try:
        for module in model.modules():
            for name, p in list(module._parameters.items()):
                if p is not None:
                    swapped.append((module, name, p))
                    setattr(module, name, stand_in(p, True))
            for name, b in list(module._buffers.items()):
                if b is not None:
                    swapped.append((module, name, b))
                    setattr(module, name, stand_in(b, False))
        yield
    finally:
        for module, name, original in reversed(swapped):
            setattr(module, name, original)


def estimate_step(model: nn.Module, args: tuple, kwargs: dict, specs: list[LayerSpec],
                  orphans: list[torch.Tensor], training: bool, autocast: torch.dtype | None = None) -> Estimate:
    """Run ``model(*args, **kwargs)`` (and the loss and backward if ``training``) on fake
    tensors, per layer; forward and loss under ``torch.autocast(device, autocast)`` when given."""
    device = target_device(model, (args, kwargs))
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    # FakeTensorMode's dispatch cache is shared by all instances; a cache hit returns outputs
    # with different aliasing/refcounts than a miss (it changes whether AccumulateGrad steals
    # or clones a gradient), so a profile would depend on what ran before it. Off: determinism.
    fake_mode.cache_enabled = False
    fakes: dict[int, torch.Tensor] = {}

    def fake_like(t: torch.Tensor, grad: bool) -> torch.Tensor:
        if id(t) not in fakes:
            with fake_mode:
                f = torch.empty_strided(tuple(t.shape), tuple(t.stride()), dtype=t.dtype, device=device)
            fakes[id(t)] = f.requires_grad_(grad) if grad and f.is_floating_point() else f
        return fakes[id(t)]

    params: dict[int, nn.Parameter] = {}

    def stand_in(t: torch.Tensor, is_param: bool) -> torch.Tensor:
        if not is_param:
            return fake_like(t, False)
        if id(t) not in params:  # one fake Parameter per real one: ties stay ties
            grad = training and t.requires_grad
            params[id(t)] = nn.Parameter(fake_like(t, grad), requires_grad=grad)
            fakes[id(t)] = params[id(t)]
        return params[id(t)]

    fargs, fkwargs = tree_map_only(torch.Tensor, lambda t: fake_like(t, t.requires_grad and training), (args, kwargs))
    try:
        with swapped_state(model, stand_in):
            excluded = {storage_key(f) for f in fakes.values()}
            return _run(model, fargs, fkwargs, specs, orphans, fakes, excluded, fake_mode, training, device,
                        autocast)
    except (DataDependentOutputException, DynamicOutputShapeException, UnsupportedOperatorException) as error:
        from ..errors import MemScaleError

        raise MemScaleError(
            f"profile: {type(model).__name__}.forward cannot run on fake tensors ({type(error).__name__}: "
            f"{error}); estimation needs shapes that do not depend on tensor values (no .item(), "
            f"nonzero() or value-dependent control flow in forward)") from error


def _without_cudnn_rnn(model: nn.Module, device: torch.device) -> Any:
    """cuDNN's fused RNN needs the real flattened weight buffer, which fake parameters do
    not have: recurrent layers on CUDA are estimated on torch's own RNN kernels instead
    (the same saved activations up to cuDNN's reserve space)."""
    if device.type == "cuda" and any(isinstance(m, nn.RNNBase) for m in model.modules()):
        return torch.backends.cudnn.flags(enabled=False)
    return contextlib.nullcontext()


def _run(model: nn.Module, fargs: tuple, fkwargs: dict, specs: list[LayerSpec], orphans: list[torch.Tensor],
         fakes: dict[int, torch.Tensor], excluded: set[int], fake_mode: FakeTensorMode, training: bool,
         device: torch.device, autocast: torch.dtype | None) -> Estimate:
    tracker = LiveTracker(fake=True, resident=excluded)
    view = _TrackerView(tracker)
    recorder = StepRecorder([s.module for s in specs], view, excluded, training, nbytes=tracker.nbytes)
    recorder.watch_tensors(fakes[id(t)] for t in orphans if id(t) in fakes)

    def on_op(func: Any, a: tuple, kw: dict, out: Any) -> None:
        view.observe()
        if not recorder.in_backward:
            recorder.note_inputs((a, kw))
            recorder.add_flops(op_flops(func, a, kw, out))

    tracker._on_op = on_op
    tracker.on_new = recorder.note_created
    flags = set_mode(model, training)
    try:
        # one tick per layer forward and one per layer backward: a big model's walk shows progress
        with progress(total=len(specs) * (2 if training else 1), desc="memscale profile", unit="layer") as bar, \
                fake_mode, tracker, _without_cudnn_rnn(model, device):
            recorder.on_progress = bar.update
            recorder.record_step(model, fargs, fkwargs,
                                 autocast=(device.type, autocast) if autocast is not None else None)
    finally:
        restore_mode(flags)
        tracker.close()
    first_use = {id(t): recorder.first_use(fakes[id(t)]) for t in orphans if id(t) in fakes}
    log.debug("estimated %d layers on fake %s tensors", len(specs), device)
    return Estimate(recorder.records, first_use)
