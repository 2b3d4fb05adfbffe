"""Tier policy: per tensor type, the share on GPU / CPU with disk the remainder.

The policy comes, in order of precedence, from explicit overrides, the tensor types the
user fixed in ``Config.tiers``, the split the engine's plan realises (``Plan.tier_policy``),
and otherwise everything on the device. A wrapped model's KV cache follows the plan's
per-layer decision (``LayerPlan.kv_tier``); an explicit override is applied by position
(:func:`layer_tiers`, the core's rule): the first ``gpu``% of the layers on the device,
the next ``cpu``% on the host, the rest on disk. Activations stay on the device
(:func:`check_inference_tiers`).

On a CPU-only machine the device *is* host RAM, so "host" placements are RAM as well;
the tier below RAM is disk.

Example:
    >>> from memscale.runtime.inference.tiers import TierPolicy, TierSplit, layer_tiers
    >>> p = TierPolicy(kv_cache=TierSplit(gpu=50, cpu=0))
    >>> layer_tiers(4, p.kv_cache, cuda=False)
    ['device', 'device', 'disk', 'disk']
"""
from __future__ import annotations

from typing import Any, Mapping

from ... import _C

TENSOR_TYPES = tuple(_C.tier_tensor_types())
#: Percent of one tensor type on the GPU and on the CPU; disk = 100 - gpu - cpu (core type).
TierSplit = _C.TierSplit
#: Immutable placement of weights, KV cache and activations (core type).
TierPolicy = _C.TierPolicy


def _split(value: Any, path: str) -> Any:
    return value if isinstance(value, TierSplit) else TierSplit.from_dict(value, path)


def tier_policy(config: Any = None, plan: Any = None, overrides: Mapping[str, Any] | None = None) -> Any:
    """Resolve the policy: ``overrides`` > ``config.tiers`` > ``plan.tier_policy`` > all on device.

    Raises ConfigError naming ``tiers.<type>`` for shares outside [0, 100] or summing past 100
    (the core's tier split rule).
    """
    chosen: dict[str, Any] = {}
    plan_tiers = getattr(plan, "tier_policy", None) if plan is not None else None
    if plan_tiers is not None and getattr(plan_tiers, "used", False):
        for t in TENSOR_TYPES:
            chosen[t] = getattr(plan_tiers.policy, t)
    user = dict(config.tiers) if config is not None else {}
    for t, v in user.items():
        chosen[t] = _split(v, f"tiers.{t}")
    given = dict(overrides or {})
    ready = {t: v for t, v in given.items() if isinstance(v, TierSplit) and t in TENSOR_TYPES}
    chosen.update(_C.parse_tier_splits({t: v for t, v in given.items() if t not in ready}, "tiers"))
    chosen.update(ready)
    return TierPolicy(**chosen)


def layer_tiers(n_layers: int, split: Any, cuda: bool) -> list[str]:
    """Tier of each of ``n_layers`` layers: "device", "host" or "disk" (shares rounded to
    whole layers, halves away from zero; the core's ``split_layer_tiers``).

    Without CUDA, "host" is RAM like the device, so it is reported as "device".
    """
    return list(_C.split_layer_tiers(int(n_layers), split, bool(cuda)))


def check_inference_tiers(policy: Any) -> None:
    """ConfigError naming ``tiers.activations`` when ``policy`` puts activations off the
    device (the engine's rule: a model's own forward holds them between its layers)."""
    _C.check_inference_activation_tiers({"activations": policy.activations.to_dict()}, "tiers")
