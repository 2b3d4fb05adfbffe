"""What both trainer callbacks share: wrap without disturbing the run's random state,
the optimizer a trainer steps with, and unwrap."""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from .. import api
from .._coerce import as_config
from ..config import Config

log = logging.getLogger("memscale")


def torch_optimizer(optimizer: Any) -> Any:
    """The torch optimizer under a trainer's wrapper (Accelerate's ``AcceleratedOptimizer``,
    Lightning's ``LightningOptimizer``), or the name ``"adamw"`` when there is none yet."""
    inner = getattr(optimizer, "optimizer", None)
    if isinstance(inner, torch.optim.Optimizer):
        return inner
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    return "adamw"


def callback_config(config: Any, config_kwargs: dict[str, Any]) -> Config:
    return as_config(config, config_kwargs, caller="MemScaleCallback", allow_both=False)


def wrap_for_trainer(model: nn.Module, cfg: Config, example_inputs: Any, optimizer: Any, *, loss_fn: Any,
                     autocast: Any, verify: bool) -> Any:
    """``memscale.wrap`` for a trainer's model; returns its plan. Profiling runs forward and
    backward on the example batch: the random state is restored afterwards, so the
    trainer's data order and dropout masks are those of a run without the callback, and
    the gradients the profile left are cleared."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        api.wrap(model, cfg, example_inputs=example_inputs, optimizer=optimizer, loss_fn=loss_fn, autocast=autocast,
                 verify=verify)
    model.zero_grad(set_to_none=True)
    plan = api.plan_of(model)
    log.info("memscale: %s wrapped for training (%d of %d layers changed)", type(model).__name__,
             sum(1 for layer in plan.layers if layer.techniques), len(plan.layers))
    return plan


def unwrap_after_training(model: nn.Module | None) -> None:
    if model is not None and api.plan_of(model) is not None:
        api.unwrap(model)
        log.info("memscale: %s unwrapped after training", type(model).__name__)
