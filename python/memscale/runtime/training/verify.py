"""Verify and re-plan: the first training step after ``wrap`` is measured; over budget, re-plan once.

The step is measured with ``memscale.track_memory`` on the model's device. Its peak is
the bytes resident when it started (parameters, buffers, gradients already there, the
batch) plus the peak allocated during forward + backward, plus the optimizer state the
graph predicts (optimizer state lives outside the model: on a first step it is not
allocated yet). If that exceeds ``REPLAN_TOLERANCE`` x the plan's budget, the next forward
call (never the backward in progress) re-plans: it removes the plan, profiles with
``measure=True`` (real per-layer saved bytes), raises each layer's ``activation_bytes``
to its measured figure, scales the budget by predicted/measured so the engine's residual
misprediction is absorbed, applies the new plan and logs why. It re-plans at most once.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ... import _C
from ...config import Config
from ...errors import InfeasibleBudgetError
from ...hardware import model_device
from ...memory import track_memory
from ...planning import plan_model
from ...profiler.distributed import is_distributed
from ...profiler.profile import profile
from ...profiler.storage import local_tensor, storage_bytes
from ..hooks import ForwardPatch
from .plan_view import has_techniques, summary

if TYPE_CHECKING:
    from .wrapped import TrainingHandle

log = logging.getLogger("memscale")

#: A first step may exceed the budget by this factor before the model is re-planned.
REPLAN_TOLERANCE = 1.05
#: A plan that changes nothing is still verified when its predicted peak is above this share
#: of the budget: the estimate misses opaque kernels' scratch (an LSTM's fused backward on
#: CPU: -10%, docs/memory-model.md), so a step predicted to just fit may not.
VERIFY_ABOVE_SHARE = 0.8


def needs_verification(plan: Any) -> bool:
    """Whether the first step under ``plan`` is measured: every plan that applies a
    technique, and a plan that applies none whose prediction is near its budget."""
    budget = int(getattr(plan, "budget_bytes", 0) or 0)
    predicted = int(getattr(plan, "predicted_peak_bytes", 0) or 0)
    return has_techniques(plan) or (budget > 0 and predicted > VERIFY_ABOVE_SHARE * budget)


def first_grad_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out if out.requires_grad else None
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        out = [getattr(out, f.name) for f in dataclasses.fields(out)]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        for item in out:
            found = first_grad_tensor(item)
            if found is not None:
                return found
    return None


def _resident_bytes(model: nn.Module) -> int:
    return storage_bytes(local_tensor(t) for t in [*model.parameters(), *model.buffers(),
                                              *(p.grad for p in model.parameters() if p.grad is not None)])


def _graph_dict(graph: Any) -> dict[str, Any]:
    return json.loads(graph.to_json()) if hasattr(graph, "to_json") else dict(graph)


class FirstStepMonitor:
    """Measures the first training step; re-plans once, before the next step, if over budget.

    Installed as the outermost forward of the model (stacked on the plan's own root patch,
    if any), so a re-plan can swap the plan and then run the *new* forward for the call
    that triggered it.
    """

    def __init__(self, model: nn.Module, state: TrainingHandle) -> None:
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
                # Paged weights not resident now are on their tier: not in memory.
                pager = self.state.applied.pager if self.state.applied is not None else None
                self.base = _resident_bytes(self.model) - (pager.evicted_bytes() if pager is not None else 0)
                self.stack = contextlib.ExitStack()
                self.tracker = self.stack.enter_context(track_memory(model_device(self.model)))
            out = forward(*args, **kwargs)
            if start:
                self._watch(out)
            return out
        return run

    def _watch(self, out: Any) -> None:
        loss = first_grad_tensor(out)
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
        # Offloaded by the plan, it is on the next tier (the step holds only its windows).
        offloaded = bool(getattr(getattr(self.state.plan, "optimizer_offload", None), "kinds", ""))
        optimizer_bytes = 0 if offloaded else sum(int(layer.get("optimizer_bytes", 0)) for layer in graph["layers"])
        # The batch was allocated before the step began: resident, but not in the model.
        self.measured = self.base + peak + optimizer_bytes + int(graph.get("input_bytes", 0))
        budget = int(getattr(self.state.plan, "budget_bytes", 0) or 0)
        predicted = int(getattr(self.state.plan, "predicted_peak_bytes", 0) or 0)
        self.state.measured_peak_bytes = self.measured
        if budget and self.measured > REPLAN_TOLERANCE * budget and is_distributed(self.model):
            # A re-plan profiles a measured step, which would run the collectives on one rank
            # alone (and ranks may measure differently): reported, never re-planned.
            log.warning("memscale: first step of %s peaked at %d bytes on this rank, over %.2f x the per-rank "
                        "budget %d (predicted %d); under torch.distributed the plan is not re-made from a "
                        "measured step: raise memory_budget or report the model", type(self.model).__name__,
                        self.measured, REPLAN_TOLERANCE, budget, predicted)
        elif budget and self.measured > REPLAN_TOLERANCE * budget and not self.state.replanned:
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


def _plan_at(model: nn.Module, state: TrainingHandle, graph: Any, budget: int) -> Any:
    cfg = Config(**{**state.cfg.to_dict(), "memory_budget": budget})
    plan, _, _ = plan_model(model, None, cfg, training=True, optimizer=state.optimizer,
                            offload_dir=state.offload_dir, graph=graph,
                            optimizer_offloadable=state.offload_optimizer)
    return plan


def _replan(model: nn.Module, state: TrainingHandle, measured: int) -> None:
    """Replace the plan with one made from measured per-layer figures and a tighter budget."""
    if state.monitor is not None:
        state.monitor.remove()
        state.monitor = None
    state.unapply()
    # The profiling step's gradients are restored by the profiler; an offloaded optimizer
    # must not store them as if the loop had made them.
    paused = state.offloaded.grad_hooks_paused() if state.offloaded is not None else contextlib.nullcontext()
    with paused:
        measured_graph = profile(model, state.example_inputs, training=True,
                                 optimizer=state.optimizer, measure=True, loss_fn=state.loss_fn,
                                 autocast=state.autocast)
    doc = _graph_dict(measured_graph)
    for layer in doc["layers"]:
        layer["activation_bytes"] = max(int(layer["activation_bytes"]),
                                        int(layer.get("measured_activation_bytes", 0)))
    graph = _C.ModelGraph.from_json(json.dumps(doc, sort_keys=True))
    budget = int(state.plan.budget_bytes)
    predicted = max(1, int(state.plan.predicted_peak_bytes))
    tighter = max(1, int(budget * min(1.0, predicted / max(measured, 1))))
    try:
        plan = _plan_at(model, state, graph, tighter)
    except InfeasibleBudgetError as refusal:
        # The scaled budget is only a margin for what the measured profile still misses;
        # where the measured minimum fits the user's budget, its plan is the best there is.
        if refusal.min_budget_bytes > budget:
            # the engine's message names the scaled planning budget; the user set `budget`
            raise InfeasibleBudgetError(
                f"the first training step of {type(model).__name__} measured {measured} bytes, over "
                f"{REPLAN_TOLERANCE:.2f} x memory_budget = {budget} bytes, and no plan made from the measured "
                f"figures fits memory_budget: min_budget_bytes = {refusal.min_budget_bytes}; raise memory_budget "
                f"to at least that (the engine: {refusal})", refusal.min_budget_bytes) from refusal
        tighter = int(refusal.min_budget_bytes)
        plan = _plan_at(model, state, graph, tighter)
    log.warning("memscale: re-planned %s: measured step %d > %.2f x budget %d; activations "
                "from a measured profile, budget for planning scaled to %d (predicted/"
                "measured = %.3f)\n%s", type(model).__name__, measured, REPLAN_TOLERANCE,
                budget, tighter, predicted / max(measured, 1), summary(plan))
    state.replanned = True
    state.apply(plan, graph)
