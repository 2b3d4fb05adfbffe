"""What the decision engine decides for offloaded inference, read for the pager.

The engine plans every inference wrap (one decider): whether and how much to page
(``Plan.offload``: policy, resident limit, prefetch depth), where each layer's weights
live (``LayerPlan.weight_tier``), where each layer's KV cache lives (``LayerPlan.kv_tier``;
``Plan.tier_policy`` the split they realise; activations stay on the device) and the
activation reservation. This module only reads the plan;
nothing here decides. The plan is made on ``memscale.profile(model, example_inputs,
training=False)``: give example inputs of the generation's batch and total length, so the
KV cache and the reservation's tokens per step are sized right.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Sequence

from torch import nn

from ... import _C
from ...config import Config
from ...errors import ConfigError, MemScaleError
from ...planning import plan_model

log = logging.getLogger("memscale")


def inference_plan(model: nn.Module, cfg: Config, example_inputs: tuple, calibration: Any = None) -> Any:
    """The engine's inference plan; raises what the engine raises (InfeasibleBudgetError
    with its minimum budget, ConfigError), before anything is written."""
    result, _, _ = plan_model(model, tuple(example_inputs), cfg, training=False,
                              offload_dir=cfg.offload.get("disk_dir") or None, calibration=calibration)
    log.info("offloaded inference: engine plan\n%s", result.summary())
    return result


def check_inference_plan(plan: Any) -> None:
    """A plan given by the caller must be an inference plan the engine made."""
    if not isinstance(plan, _C.Plan):
        raise ConfigError(f"plan: got {type(plan).__name__}, expected a memscale.Plan (memscale.plan(graph, ...))")
    if plan.training:
        raise ConfigError("plan: a training plan; offloaded inference needs one made on "
                          "memscale.profile(model, example_inputs, training=False)")


@dataclass(frozen=True)
class UnitPlacement:
    """Where the plan puts one paging unit's weights: kept on the device (pinned by the
    pager), or paged from its home tier ("host" or "disk")."""

    kept: bool
    home: str


def unit_placements(unit_names: Sequence[str], plan: Any) -> list[UnitPlacement]:
    """The plan layer of each paging unit, matched by name (units are the profiler's
    layers, so each one has a plan layer): a layer the plan offloads is paged from its
    ``weight_tier``; any other is kept on the device. A unit without a plan layer means
    the plan was made for another model: MemScaleError naming it."""
    layers = {layer.name: layer for layer in plan.layers}
    out = []
    for name in unit_names:
        layer = layers.get(name)
        if layer is None:
            raise MemScaleError(f"plan: no layer named {name!r}, a paging unit of this model; the plan was made "
                                "for another model (plan it on memscale.profile(model, example_inputs, "
                                "training=False))")
        if layer.has("offload_weights"):
            out.append(UnitPlacement(kept=False, home=layer.weight_tier))
        else:
            # A kept unit is never written anywhere; its home only names a valid tier.
            out.append(UnitPlacement(kept=True, home="disk"))
    return out


def kv_layer_tiers(plan: Any) -> list[str]:
    """The KV tier of each plan layer that holds a KV cache, in execution order (its
    ``kv_tier``: "device", "host" or "disk"; "none" marks a layer without one)."""
    return [layer.kv_tier for layer in plan.layers if layer.kv_tier != "none"]


def policy_from_plan(cfg: Config, plan: Any) -> Any:
    """The OffloadPolicy the plan's pager section describes (the disk directory and pin
    flags stay the user's)."""
    offload = plan.offload
    data: dict[str, Any] = {"policy": offload.policy, "disk_dir": cfg.offload.get("disk_dir", "")}
    if offload.policy != "none":
        data.update(ram_bytes=int(offload.ram_bytes), prefetch_n_ahead=int(offload.prefetch_n_ahead))
    if offload.policy == "pinned_hot_set":
        for key in ("pin_embeddings", "pin_output_head", "pin_last_n_layers"):
            if key in cfg.offload:
                data[key] = cfg.offload[key]
    return _C.OffloadPolicy.from_json(json.dumps(data))
