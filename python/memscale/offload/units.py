"""Paging units: the groups of modules whose parameters the pager moves as one layer.

Rules (no model is special-cased):

* Layers come from :func:`discover` (blocks of a repeated stack, embeddings, norms,
  head, ...). Layers without parameters are not paged.
* Modules whose parameters share storage (tied embedding / output head) form one unit:
  a storage can be in one place only.
* Kinds, used by the hot set: ``embedding`` (only ``nn.Embedding`` parameters),
  ``block`` (a repeated block), ``norm``, ``lm_head`` (the last unit in execution order
  when it is a ``Linear``), else ``other``.
* Order: execution order recorded from one forward of the example inputs when given,
  else definition order.

Example:
    >>> from torch import nn
    >>> from memscale.offload.units import paging_units
    >>> m = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.Linear(4, 10))
    >>> [(u.name, u.kind) for u in paging_units(m)]
    [('0', 'embedding'), ('1', 'other'), ('2', 'lm_head')]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_UNCALLED = (nn.ModuleList, nn.ModuleDict)
_SEQUENCES = (nn.ModuleList, nn.Sequential)


@dataclass
class PagingUnit:
    """One paged layer: its modules, parameters (name -> tensor) and byte size."""

    name: str
    kind: str
    modules: list[nn.Module]
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    repeated: bool = False

    @property
    def bytes(self) -> int:
        seen: dict[int, int] = {}
        for p in self.params.values():
            s = p.untyped_storage()
            seen[s._cdata] = s.nbytes()
        return sum(seen.values())


def _repeated(container: nn.Module) -> set[str]:
    if not isinstance(container, _SEQUENCES):
        return set()
    children = list(container.named_children())
    counts: dict[type, int] = {}
    for _, c in children:
        counts[type(c)] = counts.get(type(c), 0) + 1
    return {n for n, c in children if counts[type(c)] >= 2 and next(c.children(), None) is not None}


def _holds_blocks(module: nn.Module) -> bool:
    return any(_repeated(m) for m in module.modules())


def _visit(module: nn.Module, path: str, seen: set[int]) -> Iterator[tuple[str, nn.Module, bool]]:
    blocks = _repeated(module)
    for cname, child in module.named_children():
        if id(child) in seen:
            continue
        cpath = f"{path}.{cname}" if path else cname
        if cname in blocks:
            seen.add(id(child))
            yield cpath, child, True
        elif isinstance(child, _UNCALLED) or (next(child.children(), None) is not None and _holds_blocks(child)):
            yield from _visit(child, cpath, seen)
        else:
            seen.add(id(child))
            yield cpath, child, False


def discover(model: nn.Module) -> list[tuple[str, nn.Module, bool]]:
    """(path, module, repeated) of the layers of ``model`` in definition order.

    The same splitting rules as the profiler's layer discovery (memscale.profiler), so a
    paged layer is a planned layer.
    """
    if next(model.children(), None) is None:
        return [("", model, False)]
    return list(_visit(model, "", set()))


def _record_order(model: nn.Module, modules: list[nn.Module], example_inputs: tuple) -> list[int]:
    """Indices of ``modules`` in the order their forward first runs."""
    order: list[int] = []
    position = {id(m): i for i, m in enumerate(modules)}
    handles = []

    def pre_hook(module: nn.Module, _args: Any) -> None:
        i = position[id(module)]
        if i not in order:
            order.append(i)

    for m in modules:
        handles.append(m.register_forward_pre_hook(pre_hook))
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for h in handles:
            h.remove()
    return order + [i for i in range(len(modules)) if i not in order]


def _kind(module: nn.Module, repeated: bool) -> str:
    if repeated:
        return "block"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, _NORMS) or type(module).__name__.lower().endswith("norm"):
        return "norm"
    return "other"


def paging_units(model: nn.Module, example_inputs: tuple | None = None) -> list[PagingUnit]:
    """Paging units of ``model`` in execution order (see the module docstring)."""
    layers = discover(model)
    if example_inputs is not None:
        order = _record_order(model, [m for _, m, _ in layers], tuple(example_inputs))
        layers = [layers[i] for i in order]
    units: list[PagingUnit] = []
    owner: dict[int, PagingUnit] = {}  # storage -> unit holding it
    for path, module, repeated in layers:
        params = {f"{path}.{n}" if path else n: p for n, p in module.named_parameters()}
        if not params:
            continue
        tied = {id(owner[k]) for k in (p.untyped_storage()._cdata for p in params.values()) if k in owner}
        if tied:
            # Tied weights: join the first unit that holds one of these storages.
            target = next(u for u in units if id(u) in tied)
            target.modules.append(module)
            target.params.update(params)
            for p in params.values():
                owner[p.untyped_storage()._cdata] = target
            continue
        unit = PagingUnit(path, _kind(module, repeated), [module], params, repeated)
        units.append(unit)
        for p in params.values():
            owner[p.untyped_storage()._cdata] = unit
    if units and units[-1].kind == "other" and isinstance(units[-1].modules[-1], nn.Linear):
        units[-1].kind = "lm_head"
    return units
