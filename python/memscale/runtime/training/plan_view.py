"""Read the executor's view of a Plan: a dict in the json-schema.md shape, or an object.

The executor only needs, per layer, ``name``, ``kind``, ``techniques``, ``tile_chunks``
and ``activation_tier`` (plus ``bytes_before``/``bytes_after`` to size the disk tier).
Both the core's bound ``Plan`` object (attributes) and its JSON (``json.loads`` of
``plan.to_json()``) are accepted, so the executor never depends on how the plan was made.

Example:
    >>> from memscale.runtime.training.plan_view import read_plan
    >>> specs = read_plan({"layers": [{"name": "fc", "kind": "mlp",
    ...                                "techniques": ["checkpoint"], "tile_chunks": 1,
    ...                                "activation_tier": "device"}]})
    >>> specs[0].techniques
    frozenset({'checkpoint'})
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from memscale.errors import ExecutorError

#: Techniques a LayerPlan may name (json-schema.md).
KNOWN_TECHNIQUES = frozenset({"checkpoint", "offload_activations", "offload_weights", "tile"})
#: Tiers a LayerPlan's ``activation_tier`` may name.
KNOWN_TIERS = frozenset({"device", "host", "disk"})


@dataclass(frozen=True)
class LayerSpec:
    """What the executor must do to one module."""

    index: int
    name: str
    kind: str
    techniques: frozenset[str]
    tile_chunks: int
    activation_tier: str
    bytes_before: int
    bytes_after: int
    weight_tier: str = "device"

    @property
    def offloaded_bytes(self) -> int:
        """Bytes this layer's techniques move off the device (what the disk tier must hold)."""
        return max(0, self.bytes_before - self.bytes_after)


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _plan_root(plan: Any) -> Any:
    """Accept a Plan object, a dict, or JSON text."""
    if isinstance(plan, (str, bytes)):
        try:
            return json.loads(plan)
        except json.JSONDecodeError as exc:
            raise ExecutorError(f"plan: text given is not valid JSON ({exc}); "
                                "pass a Plan, a dict or Plan.to_json() text") from exc
    if _get(plan, "layers") is None:
        raise ExecutorError(f"plan: {type(plan).__name__} has no 'layers'; pass a Plan "
                            "(memscale.plan(...)) or a dict in the docs/json-schema.md shape")
    return plan


def _read_layer(i: int, raw: Any) -> LayerSpec:
    where = f"plan.layers[{i}]"
    name = _get(raw, "name")
    if not isinstance(name, str):
        raise ExecutorError(f"{where}.name: expected a module path string, got {name!r}")
    techniques_raw = _get(raw, "techniques", ())
    if isinstance(techniques_raw, str) or not all(isinstance(t, str) for t in techniques_raw):
        raise ExecutorError(f"{where} ({name!r}).techniques: expected a list of strings, "
                            f"got {techniques_raw!r}")
    techniques = frozenset(techniques_raw)
    unknown = techniques - KNOWN_TECHNIQUES
    if unknown:
        raise ExecutorError(f"{where} ({name!r}).techniques: unknown {sorted(unknown)}; "
                            f"allowed: {sorted(KNOWN_TECHNIQUES)}")
    chunks = _get(raw, "tile_chunks", 1)
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
        raise ExecutorError(f"{where} ({name!r}).tile_chunks: expected an int >= 1, got {chunks!r}")
    tier = _get(raw, "activation_tier", "device")
    if tier not in KNOWN_TIERS:
        raise ExecutorError(f"{where} ({name!r}).activation_tier: {tier!r} is not one of "
                            f"{sorted(KNOWN_TIERS)}")
    weight_tier = _get(raw, "weight_tier", "device")
    if weight_tier not in KNOWN_TIERS:
        raise ExecutorError(f"{where} ({name!r}).weight_tier: {weight_tier!r} is not one of "
                            f"{sorted(KNOWN_TIERS)}")
    kind = _get(raw, "kind", "other")
    index = _get(raw, "index", i)
    return LayerSpec(index=int(index), name=name, kind=str(kind), techniques=techniques,
                     tile_chunks=chunks, activation_tier=str(tier),
                     bytes_before=int(_get(raw, "bytes_before", 0) or 0),
                     bytes_after=int(_get(raw, "bytes_after", 0) or 0), weight_tier=str(weight_tier))


def read_plan(plan: Any) -> list[LayerSpec]:
    """Return one LayerSpec per plan layer, in plan order; raise ExecutorError on bad input."""
    root = _plan_root(plan)
    specs = [_read_layer(i, raw) for i, raw in enumerate(_get(root, "layers"))]
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs):
        if spec.name in seen:
            raise ExecutorError(f"plan.layers[{i}].name: {spec.name!r} repeats plan.layers"
                                f"[{seen[spec.name]}]; each module may appear once")
        seen[spec.name] = i
    return specs


def plan_is_skipped(plan: Any) -> bool:
    """True when the plan says nothing is to be done (``skipped``)."""
    return bool(_get(_plan_root(plan), "skipped", False))


def plan_skip_reason(plan: Any) -> str:
    """The plan's ``skip_reason`` (empty when absent)."""
    return str(_get(_plan_root(plan), "skip_reason", "") or "")


def has_techniques(plan: Any) -> bool:
    """The plan changes at least one layer (and is not a skipped plan)."""
    return any(spec.techniques for spec in read_plan(plan)) and not getattr(plan, "skipped", False)


def summary(plan: Any) -> str:
    """The plan's summary table (its repr for a plan without one)."""
    text = getattr(plan, "summary", None)
    return text() if callable(text) else repr(plan)
