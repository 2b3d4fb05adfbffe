"""Tier policy: per tensor type, the share on GPU / CPU with disk the remainder.

The policy comes, in order of precedence, from explicit overrides, the tensor types the
user fixed in ``Config.tiers``, the engine's policy search (``Plan.tier_policy``), and
otherwise everything on the device. It is applied per layer: the first ``gpu``% of the
layers on the device, the next ``cpu``% on the host, the rest on disk.

On a CPU-only machine the device *is* host RAM, so "host" placements are RAM as well;
the tier below RAM is disk.

Example:
    >>> from memscale.runtime.inference.tiers import TierPolicy, TierSplit, layer_tiers
    >>> p = TierPolicy(kv_cache=TierSplit(gpu=50, cpu=0))
    >>> layer_tiers(4, p.kv_cache, cuda=False)
    ['device', 'device', 'disk', 'disk']
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from ...errors import ConfigError

TENSOR_TYPES = ("weights", "kv_cache", "activations")


@dataclass(frozen=True)
class TierSplit:
    """Percent of one tensor type on the GPU and on the CPU; disk = 100 - gpu - cpu."""

    gpu: float = 100.0
    cpu: float = 0.0

    @property
    def disk(self) -> float:
        return 100.0 - self.gpu - self.cpu


@dataclass(frozen=True)
class TierPolicy:
    """Immutable placement of weights, KV cache and activations."""

    weights: TierSplit = field(default_factory=TierSplit)
    kv_cache: TierSplit = field(default_factory=TierSplit)
    activations: TierSplit = field(default_factory=TierSplit)

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {t: {"gpu": getattr(self, t).gpu, "cpu": getattr(self, t).cpu, "disk": getattr(self, t).disk}
                for t in TENSOR_TYPES}


def _split(value: Any, path: str) -> TierSplit:
    if isinstance(value, TierSplit):
        value = {"gpu": value.gpu, "cpu": value.cpu}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: got {value!r}, expected {{'gpu': percent, 'cpu': percent}}")
    unknown = set(value) - {"gpu", "cpu", "disk"}
    if unknown:
        raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r}; allowed keys: gpu, cpu (disk is the remainder)")
    shares = {}
    for key in ("gpu", "cpu"):
        x = value.get(key, 100.0 if key == "gpu" else 0.0)
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or not 0 <= x <= 100:
            raise ConfigError(f"{path}.{key}: got {x!r}, expected a percentage in [0, 100]")
        shares[key] = float(x)
    if shares["gpu"] + shares["cpu"] > 100.0 + 1e-9:
        raise ConfigError(f"{path}: gpu + cpu = {shares['gpu'] + shares['cpu']:g} exceeds 100 "
                          "(disk takes the remainder, 100 - gpu - cpu)")
    if "disk" in value and abs(float(value["disk"]) - (100.0 - shares["gpu"] - shares["cpu"])) > 1e-6:
        raise ConfigError(f"{path}.disk: got {value['disk']!r}, but disk is 100 - gpu - cpu = "
                          f"{100.0 - shares['gpu'] - shares['cpu']:g}")
    return TierSplit(shares["gpu"], shares["cpu"])


def tier_policy(config: Any = None, plan: Any = None, overrides: Mapping[str, Any] | None = None) -> TierPolicy:
    """Resolve the policy: ``overrides`` > ``config.tiers`` > ``plan.tier_policy`` > all on device.

    Raises ConfigError naming ``tiers.<type>`` for shares outside [0, 100] or summing past 100.
    """
    chosen: dict[str, TierSplit] = {}
    plan_tiers = getattr(plan, "tier_policy", None) if plan is not None else None
    if plan_tiers is not None and getattr(plan_tiers, "used", False):
        for t in TENSOR_TYPES:
            s = getattr(plan_tiers.policy, t)
            chosen[t] = _split({"gpu": s.gpu, "cpu": s.cpu}, f"plan.tier_policy.{t}")
    user = dict(config.tiers) if config is not None else {}
    for t, v in user.items():
        chosen[t] = _split(v, f"tiers.{t}")
    for t, v in (overrides or {}).items():
        if t not in TENSOR_TYPES:
            raise ConfigError(f"tiers: unknown tensor type {t!r}; allowed: {', '.join(TENSOR_TYPES)}")
        chosen[t] = _split(v, f"tiers.{t}")
    return TierPolicy(**chosen)


def layer_tiers(n_layers: int, split: TierSplit, cuda: bool) -> list[str]:
    """Tier of each of ``n_layers`` layers: "device", "host" or "disk" (shares rounded to whole layers).

    Without CUDA, "host" is RAM like the device, so it is reported as "device".
    """
    n_device = round(n_layers * split.gpu / 100.0)
    n_host = round(n_layers * (split.gpu + split.cpu) / 100.0) - n_device
    tiers = ["device"] * n_device + ["host"] * n_host
    tiers += ["disk"] * (n_layers - len(tiers))
    return [("device" if t == "host" and not cuda else t) for t in tiers]
