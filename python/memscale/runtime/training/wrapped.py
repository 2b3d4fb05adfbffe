"""The training side of ``memscale.wrap``: plan the step, apply the plan, watch the first step.

``wrap_training`` profiles the model on the example inputs, asks the engine for a plan
(:func:`memscale.planning.plan_model`) and applies it; the returned
:class:`TrainingHandle` is the model's one entry in the registry
(:mod:`memscale.runtime.hooks`) and owns the applied plan and the first-step monitor.
"""
from __future__ import annotations

import dataclasses
import logging
import weakref
from typing import Any

from torch import nn

from ...config import Config
from ...errors import MemScaleError
from ...planning import plan_model
from .. import hooks
from .apply import PlanHandle, install_plan
from .plan_view import has_techniques, summary
from .verify import FirstStepMonitor, needs_verification

log = logging.getLogger("memscale")


@dataclasses.dataclass
class TrainingHandle:
    """A model wrapped for training: its plan, the graph and Config it came from, the
    applied plan (``None`` when nothing was needed) and the first-step monitor."""

    model: "weakref.ref[nn.Module]"
    plan: Any
    graph: Any
    cfg: Any
    example_inputs: Any
    optimizer: Any  # a name or the user's torch optimizer (profiler.optimizer)
    offload_dir: str | None
    loss_fn: Any = None
    autocast: Any = None
    applied: PlanHandle | None = None
    monitor: Any = None
    replanned: bool = False
    measured_peak_bytes: int = 0

    def unapply(self) -> None:
        """Take the applied plan off the model (the plan stays recorded)."""
        if self.applied is not None:
            self.applied.remove()
            self.applied = None

    def apply(self, plan: Any, graph: Any) -> None:
        """Make ``plan`` the model's plan, replacing any applied one."""
        model = self.model()
        self.unapply()
        self.plan, self.graph = plan, graph
        if model is not None and has_techniques(plan):
            self.applied = install_plan(model, plan, offload_dir=self.offload_dir)

    def remove(self) -> None:
        """Remove the monitor and the plan; the model is restored exactly. Idempotent."""
        if self.monitor is not None:
            self.monitor.remove()
            self.monitor = None
        self.unapply()
        model = self.model()
        if model is not None:
            hooks.unregister(model, self)




def offload_dir_of(cfg: Config, hardware: Any = None) -> str | None:
    disk_dir = (cfg.offload or {}).get("disk_dir") if isinstance(cfg.offload, dict) else None
    return disk_dir or getattr(hardware, "offload_dir", None) or None


def wrap_training(model: nn.Module, cfg: Config, example_inputs: Any, optimizer: Any,
                  verify: bool, loss_fn: Any = None, autocast: Any = None) -> TrainingHandle:
    """Plan and apply ``model``'s training step under ``cfg``; register and return its handle.

    The Config goes to the engine unchanged: what the training runtime cannot apply
    (weight offload on every layer, head + loss fusion without the loss inside forward or
    with ``loss_fn``, ...) is recorded per layer in the profiled graph (``cannot``), and
    the engine plans only within it. So the plan applied here is exactly
    ``memscale.plan(memscale.profile(model, example_inputs, loss_fn=loss_fn), cfg)`` on
    the model's device, and a refusal (``InfeasibleBudgetError``) states the same minimum.
    """
    if hooks.handle_of(model) is not None:
        raise MemScaleError(f"wrap: this {type(model).__name__} is already wrapped; call "
                            "memscale.unwrap(model) first")
    plan, graph, hardware = plan_model(model, example_inputs, cfg, training=True, optimizer=optimizer,
                                       offload_dir=offload_dir_of(cfg), loss_fn=loss_fn, autocast=autocast)
    handle = TrainingHandle(model=weakref.ref(model), plan=plan, graph=graph, cfg=cfg,
                            example_inputs=example_inputs, optimizer=optimizer,
                            offload_dir=offload_dir_of(cfg, hardware), loss_fn=loss_fn,
                            autocast=autocast)
    log.info("memscale plan for %s:\n%s", type(model).__name__, summary(plan))
    if not has_techniques(plan):
        reason = getattr(plan, "skip_reason", "") or "the step fits the budget as it is"
        watched = verify and needs_verification(plan)
        log.info("memscale: no optimization needed for %s (%s); %s", type(model).__name__, reason,
                 "its first step is measured (predicted near the budget)" if watched else "the model is unchanged")
    else:
        handle.apply(plan, graph)
        watched = verify
    hooks.register(model, handle)
    if watched:
        handle.monitor = FirstStepMonitor(model, handle)
    return handle
