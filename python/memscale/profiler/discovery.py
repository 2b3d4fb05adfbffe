"""Layer discovery: split any ``nn.Module`` into the layers the engine plans on.

Rules (general; no model is special-cased):

* The root is always split into its children (a childless root is one layer, ``""``).
* Inside an ``nn.ModuleList`` or ``nn.Sequential``, children whose class occurs at least
  twice and that are composite (have submodules) are *repeated blocks*: one layer each.
* A child is split further when it is a container that is never called itself
  (``ModuleList``/``ModuleDict``) or when its subtree holds repeated blocks (so
  ``transformer.h.3`` and ``transformer.wte`` become layers, not ``transformer``).
* Every other child is one layer (embeddings, norms, heads, the remaining children).

Kinds (:func:`layer_kinds`) come from each layer's modules (:func:`memscale.profiler.
introspect.classify`) once execution order is known: the output head is the last
executed Linear-bearing layer after every block. The profiler and the inference
runtime's paging units both use these two functions, so a paged layer is a planned one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

from torch import nn

from . import introspect

_UNCALLED_CONTAINERS = (nn.ModuleList, nn.ModuleDict)
_SEQUENCE_CONTAINERS = (nn.ModuleList, nn.Sequential)


@dataclass(frozen=True)
class LayerSpec:
    """One discovered layer: its module path, module object, and whether it is a repeated block."""

    name: str
    module: nn.Module
    repeated: bool


def _repeated_children(container: nn.Module) -> set[str]:
    """Names of children that are repeated composite blocks of ``container``."""
    if not isinstance(container, _SEQUENCE_CONTAINERS):
        return set()
    counts: dict[type, int] = {}
    children = list(container.named_children())
    for _, child in children:
        counts[type(child)] = counts.get(type(child), 0) + 1
    return {
        name for name, child in children
        if counts[type(child)] >= 2 and next(child.children(), None) is not None
    }


def _holds_blocks(module: nn.Module) -> bool:
    """Whether ``module`` or anything below it is a container of repeated blocks."""
    return any(_repeated_children(m) for m in module.modules())


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _visit(module: nn.Module, path: str, seen: set[int]) -> Iterator[LayerSpec]:
    blocks = _repeated_children(module)
    for cname, child in module.named_children():
        if id(child) in seen:  # a module registered twice (shared) is one layer, at its first path
            continue
        cpath = _join(path, cname)
        if cname in blocks:
            seen.add(id(child))
            yield LayerSpec(cpath, child, True)
        elif isinstance(child, _UNCALLED_CONTAINERS) or (next(child.children(), None) is not None
                                                          and _holds_blocks(child)):
            yield from _visit(child, cpath, seen)
        else:
            seen.add(id(child))
            yield LayerSpec(cpath, child, False)


def discover_layers(model: nn.Module) -> list[LayerSpec]:
    """Layers of ``model`` in definition order (the profiler re-orders them by execution).

    >>> from torch import nn
    >>> [s.name for s in discover_layers(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))]
    ['0', '1']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if next(model.children(), None) is None:
        return [LayerSpec("", model, False)]
    specs = list(_visit(model, "", set()))
    return specs if specs else [LayerSpec("", model, False)]


def layer_kinds(layers: Sequence[LayerSpec], executed: Sequence[bool]) -> list[str]:
    """Kind of each layer of ``layers`` (in execution order; ``executed[i]``: it ran).

    >>> from torch import nn
    >>> m = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4), nn.Linear(4, 10))
    >>> layer_kinds(discover_layers(m), [True, True, True])
    ['embedding', 'norm', 'lm_head']
    """
    kinds = [introspect.classify(spec.module, spec.repeated) for spec in layers]
    last_block = max((p for p, kind in enumerate(kinds) if kind == "block"), default=-1)
    for p in range(len(layers) - 1, last_block, -1):
        if executed[p] and kinds[p] in ("other", "mlp") and introspect.has_linear(layers[p].module):
            kinds[p] = "lm_head"
            break
    return kinds
