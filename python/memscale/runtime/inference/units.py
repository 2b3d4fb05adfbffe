"""Paging units: the groups of modules whose parameters the pager moves as one layer.

Rules (no model is special-cased):

* Layers and their kinds come from the profiler's discovery
  (:func:`memscale.profiler.discovery.discover_layers` and ``layer_kinds``), so a paged
  layer is a planned layer. Layers without parameters are not paged.
* Modules whose parameters share storage (tied embedding / output head) form one unit:
  a storage can be in one place only; the unit keeps the kind of its first layer.
* Order: execution order recorded from one forward of the example inputs when given,
  else definition order.

Example:
    >>> from torch import nn
    >>> from memscale.runtime.inference.units import paging_units
    >>> m = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.Linear(4, 10))
    >>> [(u.name, u.kind) for u in paging_units(m)]
    [('0', 'embedding'), ('1', 'other'), ('2', 'lm_head')]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...profiler.discovery import discover_layers, layer_kinds
from ...profiler.storage import storage_bytes, storage_key


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
        return storage_bytes(self.params.values())


def _record_order(model: nn.Module, modules: list[nn.Module], example_inputs: tuple) -> tuple[list[int], int]:
    """Indices of ``modules`` in the order their forward first runs (those that never ran
    follow in definition order), and how many ran."""
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
    return order + [i for i in range(len(modules)) if i not in order], len(order)


def paging_units(model: nn.Module, example_inputs: tuple | None = None) -> list[PagingUnit]:
    """Paging units of ``model`` in execution order (see the module docstring)."""
    layers = discover_layers(model)
    executed = [True] * len(layers)
    if example_inputs is not None:
        modules = [spec.module for spec in layers]
        order, ran = _record_order(model, modules, tuple(example_inputs))
        layers = [layers[i] for i in order]
        executed = [p < ran for p in range(len(layers))]
    kinds = layer_kinds(layers, executed)
    units: list[PagingUnit] = []
    owner: dict[int, PagingUnit] = {}  # storage -> unit holding it
    for spec, kind in zip(layers, kinds):
        path, module = spec.name, spec.module
        params = {f"{path}.{n}" if path else n: p for n, p in module.named_parameters()}
        if not params:
            continue
        tied = {id(owner[k]) for k in (storage_key(p) for p in params.values()) if k in owner}
        if tied:
            # Tied weights: join the first unit that holds one of these storages.
            target = next(u for u in units if id(u) in tied)
            target.modules.append(module)
            target.params.update(params)
            for p in params.values():
                owner[storage_key(p)] = target
            continue
        unit = PagingUnit(path, kind, [module], params, spec.repeated)
        units.append(unit)
        for p in params.values():
            owner[storage_key(p)] = unit
    return units
