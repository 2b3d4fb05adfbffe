"""The measured memory of one training step at the positions of the predicted timeline.

:func:`record_timeline` runs real AdamW training steps of a model and measures, at each
layer's forward, each layer's backward and the optimizer step, the peak of every tensor
byte resident then: what was resident when the step started (parameters, buffers,
optimizer state, the batch) plus the meter's peak inside that position. The meter is
``memscale.track_memory`` on the model's device: memscale's counting allocator on CPU, the
caching allocator's statistics on CUDA. Positions are delimited by module forward
pre/post hooks and by a gradient hook on each layer's output (its backward starts when
that gradient exists and lasts until the next layer's starts, or backward ends).
:func:`timeline_record` joins it with the predicted timeline into the plain dict the
report draws (``memscale.report``).

Example:
    >>> import torch, memscale
    >>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8))
    >>> measured = memscale.record_timeline(model, (torch.randn(32, 64),), ["0", "1"],
    ...                                     loss_fn=lambda out: out.square().mean())
    >>> list(measured.bytes)
    ['forward 0', 'forward 1', 'backward 1', 'backward 0', 'optimizer step']
    >>> measured.meter
    'memscale counting allocator (CPU)'
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
from torch import nn

from .errors import MemScaleError
from .memory import track_memory
from .profiler.storage import storage_bytes
from .runtime.training.verify import first_grad_tensor
from .profiler.recorder import step_loss

OPTIMIZER_STEP = "optimizer step"


@dataclasses.dataclass
class MeasuredTimeline:
    """Measured bytes per position label (``"forward <layer>"``, ``"backward <layer>"``,
    ``"optimizer step"``) in the order the step reached them, and the meter that measured."""

    bytes: dict[str, int]
    meter: str

    @property
    def peak_bytes(self) -> int:
        return max(self.bytes.values(), default=0)


def _meter_name(device: torch.device) -> str:
    if device.type == "cpu":
        return "memscale counting allocator (CPU)"
    return f"torch.cuda.max_memory_allocated ({device})"


def _layer_names(layers: Any) -> list[str]:
    if hasattr(layers, "layers"):  # a Plan or a ModelGraph
        return [layer.name for layer in layers.layers]
    return [str(name) for name in layers]


class _Positions:
    """Opens and closes positions on hook events; each closed position keeps its peak."""

    def __init__(self, tracker: Any, resident: int) -> None:
        self.tracker, self.resident = tracker, resident
        self.open: str | None = None
        self.bytes: dict[str, int] = {}
        self.in_backward = False  # forward hooks then come from a checkpoint's recompute

    def start(self, label: str) -> None:
        self.stop()
        self.tracker.reset_peak()
        self.open = label

    def stop(self) -> None:
        if self.open is not None:
            self.bytes[self.open] = max(self.bytes.get(self.open, 0), self.resident + self.tracker.peak_bytes)
            self.open = None


def record_timeline(model: nn.Module, example_inputs: Any, layers: Any, *,
                    loss_fn: Callable[[Any], torch.Tensor] | None = None, optimizer: Any = None,
                    seed: int | None = 0) -> MeasuredTimeline:
    """Measure one training step of ``model`` on ``example_inputs`` (a tuple of positional
    arguments or a dict of keyword arguments) at the positions of the layers ``layers``
    (a Plan, a ModelGraph or module paths), after two warm-up steps that create the
    optimizer state. ``loss_fn(output)``: the loss outside the model (default: the model's
    own, a scalar or ``.loss``); ``optimizer``: the torch optimizer the loop steps with
    (default ``torch.optim.AdamW`` with torch's defaults). The model trains three steps.
    """
    args, kwargs = (example_inputs, {}) if isinstance(example_inputs, (tuple, list)) else ((), dict(example_inputs))
    names = _layer_names(layers)
    modules = {name: model.get_submodule(name) for name in names}
    device = next(model.parameters()).device
    opt = optimizer or torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    loss_of = loss_fn or step_loss
    positions: _Positions | None = None
    handles: list[Any] = []

    def forward_pre(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any) -> None:
            if positions is not None and torch.is_grad_enabled() and not positions.in_backward:
                positions.start(f"forward {name}")
        return hook

    def forward_post(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if positions is None or not torch.is_grad_enabled() or positions.in_backward:
                return
            positions.stop()
            grad_of = first_grad_tensor(output)
            if grad_of is not None:
                grad_of.register_hook(lambda grad: positions.start(f"backward {name}") if positions else None)
        return hook

    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(forward_pre(name)))
        handles.append(module.register_forward_hook(forward_post(name)))

    def step(i: int, tracked: _Positions | None) -> None:
        nonlocal positions
        if seed is not None:
            torch.manual_seed(seed + i)
        positions = tracked
        output = model(*args, **kwargs)
        loss = loss_of(output)
        if loss_fn is None:
            del output  # the model's own loss: the loop keeps the loss, not the output
        if tracked is not None:
            tracked.in_backward = True
        loss.backward()
        del loss
        output = None  # a loss outside the model: the loop held the output through backward
        if tracked is not None:
            tracked.start(OPTIMIZER_STEP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if tracked is not None:
            tracked.stop()
        positions = None

    try:
        for i in range(2):
            step(i, None)
        resident = storage_bytes([*model.parameters(), *model.buffers(), *_tensors((args, kwargs)),
                                  *_tensors(list(opt.state.values()))])
        with track_memory(device) as tracker:
            recorded = _Positions(tracker, resident)
            step(2, recorded)
    finally:
        for handle in handles:
            handle.remove()
    return MeasuredTimeline(dict(recorded.bytes), _meter_name(device))


def _tensors(tree: Any) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_leaves

    return [t for t in tree_leaves(tree) if torch.is_tensor(t)]


def timeline_record(timeline: Any, measured: MeasuredTimeline | None = None) -> dict[str, Any]:
    """The predicted ``timeline`` (``memscale.plan_timeline``), with the ``measured`` bytes
    where a position was measured (None elsewhere), as the plain dict a report draws and a
    benchmark record carries under ``"timeline"``."""
    points: list[Any] = list(timeline.points)
    record: dict[str, Any] = {
        "labels": [p.label for p in points], "phases": [p.phase for p in points],
        "before": [int(p.before_bytes) for p in points],
        "after": [int(p.after_bytes) for p in points],
        "budget_bytes": int(timeline.budget_bytes),
    }
    if measured is not None:
        record["measured"] = [measured.bytes.get(label) for label in record["labels"]]
        record["meter"] = measured.meter
    return record



def timeline_of(model: nn.Module, example_inputs: Any, *, loss_fn: Callable[[Any], torch.Tensor] | None = None,
                measure: bool = True) -> dict[str, Any]:
    """The step timeline of a model ``memscale.wrap`` wrapped for training, as
    :func:`timeline_record` gives it: predicted from the graph, plan and Config the wrap
    used, on this machine's hardware, and (``measure``) one measured step at the same
    positions (:func:`record_timeline`: the model trains three steps)."""
    from .hardware import detect_hardware, model_device
    from .planning import plan_timeline
    from .runtime import hooks
    from .runtime.training.wrapped import TrainingHandle, offload_dir_of

    handle = hooks.handle_of(model, TrainingHandle)
    if handle is None:
        raise MemScaleError(f"timeline_of: this {type(model).__name__} is not wrapped for training; "
                            "call memscale.wrap(model, cfg, example_inputs=...) first")
    hardware = detect_hardware(offload_dir_of(handle.cfg), device=model_device(model))
    predicted = plan_timeline(handle.graph, handle.plan, handle.cfg, hardware)
    measured = record_timeline(model, example_inputs, handle.plan, loss_fn=loss_fn) if measure else None
    return timeline_record(predicted, measured)
