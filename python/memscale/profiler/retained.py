"""Tensors a step keeps referenced outside autograd: what no technique can free.

Checkpointing drops a layer's saved tensors and activation offload moves them, but a
tensor that something else also references stays where it is until that reference goes.
Two such holders are common in training:

* the non-tensor state a model's calls carry: a Hugging Face ``Cache`` object
  (``use_cache=True`` also in training) that every attention layer appends its keys and
  values to. A checkpointed layer keeps its non-tensor arguments for the recompute
  (runtime/training/checkpoint.py), so the cache and everything in it outlive the
  forward;
* the output the loop computes its loss from outside the model
  (``out = model(x); loss = loss_fn(out); loss.backward()``): the logits, and the cache
  in ``out.past_key_values``, until backward returns.

:func:`reachable_tensors` walks such roots the way the checkpoint executor records them
(:func:`stateful` decides which arguments are roots), so the profiler charges exactly
what the runtime and the loop hold.

Example:
    >>> import torch
    >>> class Cache:
    ...     def __init__(self): self.layers = [{"keys": torch.zeros(2)}]
    >>> [tuple(t.shape) for t in reachable_tensors([Cache()])]
    [(2,)]
    >>> stateful((torch.zeros(1), 3)), stateful(Cache())
    (False, True)
"""
from __future__ import annotations

import types
from typing import Any, Iterable, Iterator

import torch

#: Values that hold no mutable state of their own (nor tensors worth following).
ATOMIC = (int, float, complex, bool, str, bytes, type(None), torch.dtype, torch.device, torch.Size,
          torch.memory_format, torch.layout, type, types.FunctionType, types.BuiltinFunctionType,
          types.MethodType, types.ModuleType, torch.nn.Module, torch.Generator)


def stateful(value: Any) -> bool:
    """Whether ``value`` (a non-tensor argument) may hold mutable state: anything but a
    tensor, an atomic value, or a tuple of those (a tuple of tensors is plain input)."""
    if isinstance(value, (torch.Tensor, *ATOMIC)):
        return False
    if isinstance(value, tuple):
        return any(stateful(v) for v in value)
    return True


class StateTooLarge(Exception):
    """More than ``limit`` objects are reachable from the roots :func:`walk_state` was given."""


def walk_state(roots: Iterable[Any], limit: int = 100_000) -> Iterator[Any]:
    """Each distinct tensor and mutable object reachable from ``roots`` through tuples,
    lists, sets, dict values and object attributes (``vars``), once, never through a module
    or into a tensor; raises :class:`StateTooLarge` past ``limit`` objects (a cache's
    object graph is a few dozen). The one walk of the profiler's retained bytes and the
    checkpoint executor's state guard, so both see the same state."""
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, ATOMIC):
            continue
        seen.add(id(obj))
        if len(seen) > limit:
            raise StateTooLarge(f"over {limit} objects reachable")
        yield obj
        if isinstance(obj, torch.Tensor):
            continue
        if isinstance(obj, (tuple, list, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())


def reachable_tensors(roots: Iterable[Any], limit: int = 100_000) -> list[torch.Tensor]:
    """Every distinct tensor :func:`walk_state` reaches from ``roots``; the walk stops at
    ``limit`` objects and keeps what it found."""
    found: list[torch.Tensor] = []
    try:
        for obj in walk_state(roots, limit):
            if isinstance(obj, torch.Tensor):
                found.append(obj)
    except StateTooLarge:
        pass
    return found
