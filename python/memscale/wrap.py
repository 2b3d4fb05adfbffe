"""``memscale.wrap`` / ``plan_of`` / ``unwrap``: the one-line entry point for training.

``wrap(model, cfg, example_inputs=...)`` profiles the model on the example inputs,
detects the hardware, asks the engine for a plan and applies it with the executor. It
returns the *same* module object; ``state_dict()`` is unchanged, outputs and gradients
equal the unwrapped model's. The plan summary is logged at INFO; when the plan needs
nothing (skipped, or no technique on any layer) the model is left untouched and the log
says so. ``unwrap(model)`` removes everything and restores the module exactly.

Verify and re-plan: the first training step after ``wrap`` is measured with
``memscale.track_memory`` on the model's device. The step's peak is the bytes resident
when it started (parameters, buffers, gradients already there, the batch) plus the peak allocated
during forward + backward, plus the optimizer state the graph predicts (optimizer state
lives outside the model: on a first step it is not allocated yet). If that exceeds 1.05 × the
plan's budget, the next forward call (never the backward in progress) re-plans: it
removes the plan, profiles with ``measure=True`` (real per-layer saved bytes), raises each
layer's ``activation_bytes`` to its measured figure, scales the budget by
predicted/measured so the engine's residual misprediction is absorbed, applies the new
plan and logs why. It re-plans at most once.

Example (needs the engine, ``memscale.plan``):
    >>> from memscale.testing import models
    >>> from memscale.wrap import plan_of, unwrap, wrap
    >>> model = models.build("gpt", n_layers=2)
    >>> batch = models.example_inputs("gpt", model, batch=2, seq=16)
    >>> wrap(model, memory_budget="64MiB", force_optimize=True, example_inputs=batch) is model
    True
    >>> plan_of(model) is not None
    True
    >>> unwrap(model)
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import weakref
from typing import Any

import torch
from torch import nn

from .errors import MemScaleError
from .executor import PlanHandle, apply_plan
from .executor.forward_patch import ForwardPatch
from .executor.plan_view import read_plan

log = logging.getLogger("memscale")

#: A first step may exceed the budget by this factor before the model is re-planned.
REPLAN_TOLERANCE = 1.05


@dataclasses.dataclass
class _Wrapped:
    plan: Any
    graph: Any
    cfg: Any
    example_inputs: Any
    optimizer: str
    offload_dir: str | None
    handle: PlanHandle | None
    monitor: "_FirstStepMonitor | None" = None
    replanned: bool = False
    measured_peak_bytes: int = 0


_STATE: "weakref.WeakKeyDictionary[nn.Module, _Wrapped]" = weakref.WeakKeyDictionary()


def _config(cfg: Any, config_kwargs: dict[str, Any]) -> Any:
    from .config import Config

    if cfg is not None and config_kwargs:
        raise MemScaleError(f"wrap: pass either cfg or config keywords, not both (got cfg and "
                            f"{sorted(config_kwargs)})")
    if cfg is None:
        cfg = Config(**config_kwargs)
    elif isinstance(cfg, dict):
        cfg = Config(**cfg)
    elif not isinstance(cfg, Config):
        raise MemScaleError(f"wrap: cfg must be a memscale.Config, a dict or None; got "
                            f"{type(cfg).__name__}")
    return _training_config(cfg)


def _training_config(cfg: Any) -> Any:
    """Weights stay resident in training: the optimizer step touches every parameter at
    once and the weight pager serves inference only. ``offload_weights: auto`` becomes
    ``off`` (so the engine plans without it); an explicit ``on`` is refused."""
    from .config import Config

    data = cfg.to_dict()
    setting = data.get("techniques", {}).get("offload_weights", "auto")
    if setting == "on":
        raise MemScaleError("wrap: techniques.offload_weights='on' is not supported for training "
                            "(weights stay resident; the weight pager serves inference); use "
                            "'auto' or 'off'")
    if setting == "off":
        return cfg
    log.info("memscale: training keeps weights resident: planning with offload_weights off")
    data["techniques"] = {**data.get("techniques", {}), "offload_weights": "off"}
    return Config(**data)


def _device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _offload_dir(cfg: Any, hardware: Any) -> str | None:
    disk_dir = (cfg.offload or {}).get("disk_dir") if isinstance(cfg.offload, dict) else None
    return disk_dir or getattr(hardware, "offload_dir", None) or None


def _has_techniques(plan: Any) -> bool:
    return any(spec.techniques for spec in read_plan(plan)) and not getattr(plan, "skipped", False)


def _make_plan(graph: Any, cfg: Any, hardware: Any) -> Any:
    import memscale

    engine_plan = getattr(memscale, "plan", None)  # the engine's public entry point
    if engine_plan is None:
        raise MemScaleError("wrap: memscale.plan (the decision engine) is not available in "
                            "this build; use memscale.executor.apply_plan with a plan instead")
    return engine_plan(graph, cfg, hardware=hardware)


def _summary(plan: Any) -> str:
    summary = getattr(plan, "summary", None)
    return summary() if callable(summary) else repr(plan)


def wrap(model: nn.Module, cfg: Any = None, example_inputs: Any = None, training: bool = True,
         optimizer: str = "adamw", *, verify: bool = True, **config_kwargs: Any) -> nn.Module:
    """Fit ``model``'s training step into the configured memory budget; return ``model``.

    Args:
        model: the module to train; modified in place, reversibly (``unwrap``).
        cfg: a ``memscale.Config`` (or a dict of its keys); alternatively pass the
            Config keys as keyword arguments (``memory_budget="4GiB"``).
        example_inputs: one batch as the model's forward takes it (a tensor, a tuple of
            positional arguments or a dict of keyword arguments); used to profile and,
            if the first step is over budget, to re-profile.
        training: ``True`` fits a training step (this executor); ``False`` fits inference:
            the weight pager of :mod:`memscale.offload` pages weights per
            ``cfg.offload`` / the engine's inference plan (see docs/offload.md).
        optimizer: ``none``, ``sgd``, ``sgd_momentum``, ``adam`` or ``adamw`` (its state
            counts towards the budget).
        verify: measure the first step and re-plan once if it exceeds the budget by 5%.
    """
    from .hardware import detect_hardware, model_device
    from .profile import profile

    if not isinstance(model, nn.Module):
        raise MemScaleError(f"wrap: model must be a torch.nn.Module, got {type(model).__name__}")
    if example_inputs is None:
        raise MemScaleError("wrap: example_inputs is required (one batch as forward takes it) "
                            "to profile the model")
    if training is False:
        from .offload.inference import wrap_for_inference

        if config_kwargs or cfg is None:
            cfg = _config(cfg, config_kwargs)
        inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        return wrap_for_inference(model, cfg, inputs)
    if training is not True:
        raise MemScaleError(f"wrap: training={training!r}; expected True (training step) or False (inference)")
    if model in _STATE:
        raise MemScaleError(f"wrap: this {type(model).__name__} is already wrapped; call "
                            "memscale.unwrap(model) first")
    cfg = _config(cfg, config_kwargs)
    graph = profile(model, example_inputs, training=True, optimizer=optimizer)
    hardware = detect_hardware(_offload_dir(cfg, None), device=model_device(model))
    plan = _make_plan(graph, cfg, hardware)
    state = _Wrapped(plan=plan, graph=graph, cfg=cfg, example_inputs=example_inputs,
                     optimizer=optimizer, offload_dir=_offload_dir(cfg, hardware), handle=None)
    log.info("memscale plan for %s:\n%s", type(model).__name__, _summary(plan))
    if not _has_techniques(plan):
        reason = getattr(plan, "skip_reason", "") or "the step fits the budget as it is"
        log.info("memscale: no optimization needed for %s (%s); the model is unchanged",
                 type(model).__name__, reason)
        _STATE[model] = state
        return model
    state.handle = apply_plan(model, plan, offload_dir=state.offload_dir)
    _STATE[model] = state
    if verify:
        state.monitor = _FirstStepMonitor(model, state)
    return model


def plan_of(model: nn.Module) -> Any:
    """The Plan ``wrap`` applied to ``model`` (the re-plan, if one happened); None if unwrapped."""
    state = _STATE.get(model)
    if state is None:
        from .offload.inference import handle_of

        handle = handle_of(model)
        return None if handle is None else handle.plan
    return state.plan


def unwrap(model: nn.Module) -> None:
    """Remove everything ``wrap`` installed; the module is restored exactly. Idempotent."""
    state = _STATE.pop(model, None)
    if state is None:
        from .offload.inference import handle_of, unwrap_inference

        if handle_of(model) is not None:
            unwrap_inference(model)
        return
    if state.monitor is not None:
        state.monitor.remove()
    if state.handle is not None:
        state.handle.remove()


# -- verify and re-plan ------------------------------------------------------------------

def _first_grad_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out if out.requires_grad else None
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        out = [getattr(out, f.name) for f in dataclasses.fields(out)]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        for item in out:
            found = _first_grad_tensor(item)
            if found is not None:
                return found
    return None


def _resident_bytes(model: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers(),
              *(p.grad for p in model.parameters() if p.grad is not None)]:
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def _graph_dict(graph: Any) -> dict[str, Any]:
    return json.loads(graph.to_json()) if hasattr(graph, "to_json") else dict(graph)


class _FirstStepMonitor:
    """Measures the first training step; re-plans once, before the next step, if over budget.

    Installed as the outermost forward of the model (stacked on the plan's own root patch,
    if any), so a re-plan can swap the plan and then run the *new* forward for the call
    that triggered it.
    """

    def __init__(self, model: nn.Module, state: _Wrapped) -> None:
        self.model = model
        self.state = state
        self.stack: contextlib.ExitStack | None = None
        self.tracker: Any = None
        self.base = 0
        self.measured: int | None = None
        self.pending_replan = False
        self.patch: ForwardPatch | None = ForwardPatch(model, self._wrap, name="<memscale verify>",
                                                       stack=True)

    def remove(self) -> None:
        if self.patch is not None:
            self.patch.remove()
            self.patch = None
        if self.stack is not None:
            self.stack.close()
            self.stack = None

    def _wrap(self, forward: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            if self.pending_replan:
                self.pending_replan = False
                _replan(self.model, self.state, self.measured or 0)  # removes this patch
                return self.model.forward(*args, **kwargs)
            start = self.stack is None and self.measured is None and torch.is_grad_enabled()
            if start:
                from .memory import track_memory

                self.base = _resident_bytes(self.model)
                self.stack = contextlib.ExitStack()
                self.tracker = self.stack.enter_context(track_memory(_device(self.model)))
            out = forward(*args, **kwargs)
            if start:
                self._watch(out)
            return out
        return run

    def _watch(self, out: Any) -> None:
        loss = _first_grad_tensor(out)
        if loss is None:  # nothing to backward through: the forward is the step
            self._finish()
            return

        def at_backward_start(grad: torch.Tensor) -> None:
            # Runs when backward reaches the output; the callback once backward is done.
            torch.autograd.Variable._execution_engine.queue_callback(self._finish)
        loss.register_hook(at_backward_start)

    def _finish(self) -> None:
        if self.stack is None:
            return
        peak = self.tracker.peak_bytes
        self.stack.close()
        self.stack = None
        graph = _graph_dict(self.state.graph)
        # Optimizer state lives outside the model: not allocated yet on a first step, and
        # not visible from the model otherwise; the graph's figure stands in for it.
        optimizer_bytes = sum(int(layer.get("optimizer_bytes", 0)) for layer in graph["layers"])
        # The batch was allocated before the step began: resident, but not in the model.
        self.measured = self.base + peak + optimizer_bytes + int(graph.get("input_bytes", 0))
        budget = int(getattr(self.state.plan, "budget_bytes", 0) or 0)
        predicted = int(getattr(self.state.plan, "predicted_peak_bytes", 0) or 0)
        self.state.measured_peak_bytes = self.measured
        if budget and self.measured > REPLAN_TOLERANCE * budget and not self.state.replanned:
            log.warning("memscale: first step of %s peaked at %d bytes, over %.2f x the budget "
                        "%d (predicted %d); re-planning with measured figures before the next "
                        "step", type(self.model).__name__, self.measured, REPLAN_TOLERANCE,
                        budget, predicted)
            self.pending_replan = True
            return
        log.info("memscale: first step of %s measured %d bytes against a budget of %d "
                 "(predicted %d)", type(self.model).__name__, self.measured, budget, predicted)
        # Verified: nothing more to watch. Runs after backward, never inside a forward.
        self.remove()
        self.state.monitor = None


def _replan(model: nn.Module, state: _Wrapped, measured: int) -> None:
    """Replace the plan with one made from measured per-layer figures and a tighter budget."""
    from .config import Config
    from .hardware import detect_hardware, model_device
    from .profile import profile

    if state.monitor is not None:
        state.monitor.remove()
        state.monitor = None
    if state.handle is not None:
        state.handle.remove()
        state.handle = None
    measured_graph = profile(model, state.example_inputs, training=True,
                             optimizer=state.optimizer, measure=True)
    doc = _graph_dict(measured_graph)
    for layer in doc["layers"]:
        layer["activation_bytes"] = max(int(layer["activation_bytes"]),
                                        int(layer.get("measured_activation_bytes", 0)))
    from . import _C

    graph = _C.ModelGraph.from_json(json.dumps(doc, sort_keys=True))
    budget = int(state.plan.budget_bytes)
    predicted = max(1, int(state.plan.predicted_peak_bytes))
    tighter = max(1, int(budget * min(1.0, predicted / max(measured, 1))))
    cfg = Config(**{**state.cfg.to_dict(), "memory_budget": tighter})
    hardware = detect_hardware(state.offload_dir, device=model_device(model))
    plan = _make_plan(graph, cfg, hardware)
    log.warning("memscale: re-planned %s: measured step %d > %.2f x budget %d; activations "
                "from a measured profile, budget for planning scaled to %d (predicted/"
                "measured = %.3f)\n%s", type(model).__name__, measured, REPLAN_TOLERANCE,
                budget, tighter, predicted / max(measured, 1), _summary(plan))
    state.plan, state.graph, state.replanned = plan, graph, True
    if _has_techniques(plan):
        state.handle = apply_plan(model, plan, offload_dir=state.offload_dir)
