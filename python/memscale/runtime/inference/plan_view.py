"""What the decision engine decides for offloaded inference, read for the pager.

With ``offload.policy`` "none" and a budget the weights exceed, the engine's inference
plan decides to page (``Plan.offload``: policy, resident limit, prefetch depth) and
where the KV cache and activations go (``Plan.tier_policy``, its tier-policy search). The
plan is made on ``memscale.profile(model, example_inputs, training=False)``: give example
inputs of the generation's batch and total length, so the KV cache is sized right.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from torch import nn

from ... import _C
from ...config import Config
from ...planning import plan_model
from .tiers import TENSOR_TYPES

log = logging.getLogger("memscale")


def needs_plan(cfg: Config, policy: Any) -> bool:
    """The engine is asked when it must choose the policy or a tier split the user left open."""
    return policy.policy == "none" or any(t not in cfg.tiers for t in TENSOR_TYPES if t != "weights")


def inference_plan(model: nn.Module, cfg: Config, example_inputs: tuple | None, calibration: Any = None) -> Any:
    """The engine's inference plan, or None without example inputs."""
    if example_inputs is None:
        return None
    result, _, _ = plan_model(model, tuple(example_inputs), cfg, training=False,
                              offload_dir=cfg.offload.get("disk_dir") or None, calibration=calibration)
    log.info("offloaded inference: engine plan\n%s", result.summary())
    return result


def device_layers(plan: Any) -> set[str]:
    """Names of the layers whose weights the plan keeps on the device (pinned by the pager):
    FlexGen's always-resident share of the weights. Empty without a plan, or when the plan
    pages nothing."""
    if plan is None or plan.offload.policy == "none":
        return set()
    return {layer.name for layer in plan.layers
            if layer.weight_tier == "device" and not layer.has("offload_weights")}


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
