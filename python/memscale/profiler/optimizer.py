"""What the graph records of the optimizer: its kind (the state it keeps) and how it steps
(the temporaries of its step), from a name or from the user's optimizer itself.

The engine sizes the optimizer state by kind (``_C.optimizer_state_factor``) and the step's
temporaries by implementation (docs/memory-model.md, "The optimizer step"): torch's Adam
allocates about one copy of the parameters with ``foreach=True``, two copies of a tensor plus
the previous tensor's per-tensor (torch's default on CPU), nothing fused. A name leaves the implementation
to torch's default for the device; an optimizer object says which one it uses.
"""
from __future__ import annotations

from typing import Any

import torch

from .. import _C
from ..errors import ConfigError

#: torch optimizer classes the engine models, by the graph's optimizer kind.
_KINDS: dict[type, str] = {torch.optim.AdamW: "adamw", torch.optim.Adam: "adam", torch.optim.SGD: "sgd"}


def optimizer_spec(optimizer: Any) -> tuple[str, str]:
    """``(kind, impl)`` for a graph: kind one of ``_C.optimizer_kinds()``, impl one of
    default, foreach, per_tensor, fused.

    >>> optimizer_spec("adamw")
    ('adamw', 'default')
    >>> p = [torch.nn.Parameter(torch.zeros(2))]
    >>> optimizer_spec(torch.optim.AdamW(p, foreach=True))
    ('adamw', 'foreach')
    >>> optimizer_spec(torch.optim.SGD(p, lr=0.1, momentum=0.9))
    ('sgd_momentum', 'default')
    """
    if isinstance(optimizer, str):
        _C.optimizer_state_factor(optimizer)  # refuses an unknown name, listing the allowed ones
        return optimizer, "default"
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(f"optimizer: got {type(optimizer).__name__}, expected one of {list(_C.optimizer_kinds())} "
                          "or a torch.optim.Adam / AdamW / SGD instance")
    kind = next((k for cls, k in _KINDS.items() if type(optimizer) is cls), None)
    if kind is None:
        raise ConfigError(f"optimizer: {type(optimizer).__name__} is not modelled; give torch.optim.Adam, AdamW or "
                          f"SGD, or the name of the one whose state it matches ({list(_C.optimizer_kinds())})")
    groups = optimizer.param_groups
    if kind == "sgd" and any(g.get("momentum", 0) for g in groups):
        kind = "sgd_momentum"
    if any(g.get("fused") for g in groups):
        return kind, "fused"
    flags = {g.get("foreach") for g in groups}
    if flags == {True}:
        return kind, "foreach"
    if flags == {False}:
        return kind, "per_tensor"
    # None (torch decides per device) or mixed groups: a foreach group's temporaries are the
    # larger on CPU, so say foreach where any group asks for it.
    return kind, "foreach" if True in flags else "default"
