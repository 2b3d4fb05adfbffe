"""One plan for all ranks of a torch.distributed job (docs/distributed.md).

Every rank profiles and plans its own step; these helpers make the ranks agree, through
the process group the job already runs (``torch.distributed.all_gather_object``):

* :func:`common_hardware`: each rank's detected hardware, reduced to what every rank can
  count on (the least free memory of any rank on each figure), so ranks that detect
  slightly different free memory plan against the same, smallest, budget;
* :func:`check_same_plan`: the SHA-256 of each rank's plan JSON all-gathered; ranks that
  differ (another budget, Config or model) raise an error naming them, before the first step.

Both are no-ops outside an initialised process group.
"""
from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Callable

import torch

from . import _C
from .errors import MemScaleError

log = logging.getLogger("memscale")

# Hardware figures where a rank's own value may be lower than its peers': the smallest holds.
_SMALLEST = ("host_available_bytes", "host_total_bytes", "offload_dir_free_bytes", "pinned_limit_bytes")
_DEVICE_SMALLEST = ("free_bytes", "total_bytes")


def in_process_group() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _gather(value: Any) -> list[Any]:
    values: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(values, value)
    return values


def common_hardware(hardware: Any) -> Any:
    """``hardware`` with each memory figure the smallest any rank detected (logged when the
    ranks differ); unchanged outside a process group."""
    if not in_process_group():
        return hardware
    docs = [json.loads(text) for text in _gather(hardware.to_json())]
    mine = docs[torch.distributed.get_rank()]
    common = dict(mine)
    for key in _SMALLEST:
        common[key] = min(d.get(key, 0) for d in docs)
    if all(len(d["devices"]) == len(mine["devices"]) for d in docs):
        common["devices"] = [dict(dev, **{k: min(d["devices"][i][k] for d in docs) for k in _DEVICE_SMALLEST})
                             for i, dev in enumerate(mine["devices"])]
    if common != mine:
        log.info("memscale: ranks detected different free memory; planning every rank for the smallest "
                 "(host available %d of %s bytes)", common["host_available_bytes"],
                 sorted({d["host_available_bytes"] for d in docs}))
    return _C.Hardware.from_json(json.dumps(common, sort_keys=True))


def plan_digest(plan: Any) -> str:
    return hashlib.sha256(plan.to_json().encode()).hexdigest()


def check_same_plan(make_plan: Callable[[], Any]) -> Any:
    """``make_plan()`` on every rank, checked to be the same plan everywhere.

    A rank whose planning raised still takes part in the check (so no rank waits for it);
    it then re-raises its own error.

    Raises:
        MemScaleError: the ranks' plans differ; the message names the ranks of each plan.
    """
    if not in_process_group():
        return make_plan()
    plan, error = None, None
    try:
        plan = make_plan()
        mine = plan_digest(plan)
    except Exception as raised:  # reported after the check, which every rank must join
        error, mine = raised, f"error: {type(raised).__name__}: {raised}"
    digests = _gather(mine)
    groups: dict[str, list[int]] = {}
    for rank, digest in enumerate(digests):
        groups.setdefault(digest, []).append(rank)
    if len(groups) > 1:
        described = "; ".join(f"ranks {ranks}: " + (d if d.startswith("error") else f"plan sha256 {d[:12]}")
                              for d, ranks in sorted(groups.items(), key=lambda item: item[1]))
        raise MemScaleError(f"memscale: the ranks planned differently ({described}); every rank must plan the "
                            "same step with the same Config (memory_budget, techniques) and the same per-rank "
                            "example inputs") from error
    if error is not None:
        raise error
    return plan
