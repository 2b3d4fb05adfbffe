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

import torch
from torch import nn

from ...config import Config
from ...errors import ConfigError, ExecutorError, MemScaleError
from ...planning import plan_model
from ...profiler.distributed import local_module
from .. import hooks
from .apply import PlanHandle, install_plan
from .offload_optimizer import OffloadedOptimizer
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
    offload_optimizer: bool = False  # the engine may offload the optimizer (wrap's offload_optimizer)
    offloaded: OffloadedOptimizer | None = None  # what the loop steps when the plan offloads

    def optimizer_to_step(self) -> Any:
        """The optimizer the loop steps: the OffloadedOptimizer the plan asks for, else the user's."""
        return self.offloaded if self.offloaded is not None else self.optimizer

    def sync_optimizer(self) -> None:
        """Attach the OffloadedOptimizer the plan's ``optimizer_offload`` asks for (the
        engine's decision, applied as it is), closing one it no longer asks for."""
        wanted = self.plan.optimizer_offload if hasattr(self.plan, "optimizer_offload") else None
        kinds = wanted.kinds if wanted is not None else ""
        current = "" if self.offloaded is None else (
            "state+gradients" if self.offloaded.offload_gradients else "state")
        pager = self.applied.pager if self.applied is not None else None
        if pager is not None and kinds != "state+gradients":
            raise ExecutorError(f"plan: pages the weights of {len(pager.paged)} layer(s) but offloads "
                                f"{kinds or 'no'} optimizer state; weight paging in training needs the state "
                                "and gradients offloaded (optimizer_offload.weights)")
        # optimizer_offload.serial_step: the engine gave up the step's overlap for memory.
        serial = wanted is not None and wanted.rule == "optimizer_offload.serial_step"
        if kinds == current:
            if self.offloaded is not None:  # a new plan (re-planned): the same optimizer steps its pager
                self.offloaded.set_paging(pager, serial)
            return
        if current:
            log.warning("memscale: the new plan offloads %r instead of %r; call memscale.optimizer_for(model) "
                        "again for the optimizer to step", kinds or "nothing", current)
        self.close_optimizer()
        if kinds:
            self.offloaded = OffloadedOptimizer(self.optimizer, tier=wanted.tier, directory=self.offload_dir,
                                                gradients=kinds == "state+gradients", weights=pager, serial=serial)
            log.info("memscale: %s (%s)", wanted.reason, wanted.rule)

    def close_optimizer(self) -> None:
        """Put the offloaded state back into the user's optimizer and remove its files."""
        if self.offloaded is not None:
            self.offloaded.close(restore=True)
            self.offloaded = None

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
            # under DDP the plan names the layers of the module it wraps (what was profiled)
            self.applied = install_plan(local_module(model), plan, offload_dir=self.offload_dir,
                                        page_weights=self.offload_optimizer)
        self.sync_optimizer()

    def remove(self) -> None:
        """Remove the monitor and the plan; the model is restored exactly. Idempotent."""
        if self.monitor is not None:
            self.monitor.remove()
            self.monitor = None
        self.unapply()
        self.close_optimizer()
        model = self.model()
        if model is not None:
            hooks.unregister(model, self)




def offload_dir_of(cfg: Config, hardware: Any = None) -> str | None:
    disk_dir = (cfg.offload or {}).get("disk_dir") if isinstance(cfg.offload, dict) else None
    return disk_dir or getattr(hardware, "offload_dir", None) or None


def wrap_training(model: nn.Module, cfg: Config, example_inputs: Any, optimizer: Any,
                  verify: bool, loss_fn: Any = None, autocast: Any = None,
                  offload_optimizer: bool = False) -> TrainingHandle:
    """Plan and apply ``model``'s training step under ``cfg``; register and return its handle.

    The Config goes to the engine unchanged: what the training runtime cannot apply
    (weight offload on every layer, head + loss fusion without the loss inside forward or
    with ``loss_fn``, ...) is recorded per layer in the profiled graph (``cannot``), and
    the engine plans only within it. So the plan applied here is exactly
    ``memscale.plan(memscale.profile(model, example_inputs, loss_fn=loss_fn), cfg)`` on
    the model's device, and a refusal (``InfeasibleBudgetError``) states the same minimum.
    With ``offload_optimizer`` the engine may keep the optimizer state and gradients on the
    next tier; the handle then holds the OffloadedOptimizer the loop steps
    (``memscale.optimizer_for``).
    """
    if hooks.handle_of(model) is not None:
        raise MemScaleError(f"wrap: this {type(model).__name__} is already wrapped; call "
                            "memscale.unwrap(model) first")
    if offload_optimizer is not True and offload_optimizer is not False:
        raise ConfigError(f"wrap: offload_optimizer={offload_optimizer!r}; expected True or False")
    if offload_optimizer and not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"wrap: offload_optimizer=True needs optimizer= the torch optimizer the loop steps "
                          f"(Adam, AdamW or SGD), got {optimizer!r}")
    plan, graph, hardware = plan_model(model, example_inputs, cfg, training=True, optimizer=optimizer,
                                       offload_dir=offload_dir_of(cfg), loss_fn=loss_fn, autocast=autocast,
                                       optimizer_offloadable=offload_optimizer)
    handle = TrainingHandle(model=weakref.ref(model), plan=plan, graph=graph, cfg=cfg,
                            example_inputs=example_inputs, optimizer=optimizer,
                            offload_dir=offload_dir_of(cfg, hardware), loss_fn=loss_fn,
                            autocast=autocast, offload_optimizer=offload_optimizer)
    log.info("memscale plan for %s:\n%s", type(model).__name__, summary(plan))
    if not has_techniques(plan):
        reason = getattr(plan, "skip_reason", "") or "the step fits the budget as it is"
        watched = verify and needs_verification(plan)
        log.info("memscale: no optimization needed for %s (%s); %s", type(model).__name__, reason,
                 "its first step is measured (predicted near the budget)" if watched else "the model is unchanged")
        handle.sync_optimizer()
    else:
        handle.apply(plan, graph)
        watched = verify
    hooks.register(model, handle)
    if watched:
        handle.monitor = FirstStepMonitor(model, handle)
    return handle
