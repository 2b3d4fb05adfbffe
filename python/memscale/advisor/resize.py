"""Example inputs resized along batch or seq, read off the tensors themselves.

Batch is dim 0 of every tensor input (ndim >= 1); seq is dim 1 of every token input
(an integer tensor of ndim >= 2: ids, labels, attention masks). Growing repeats the
existing rows/positions (token ids stay in the vocabulary, labels stay valid), shrinking
keeps the first ones. Models with other conventions pass ``make_inputs(size)``.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils._pytree import tree_leaves, tree_map

from ..errors import ConfigError

VARY = ("batch", "seq")


def _axis(t: Any, vary: str) -> int | None:
    if not isinstance(t, torch.Tensor):
        return None
    if vary == "batch":
        return 0 if t.dim() >= 1 else None
    is_token = not t.dtype.is_floating_point and not t.dtype.is_complex
    return 1 if is_token and t.dim() >= 2 else None


def _resized(t: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    have = t.shape[axis]
    if size <= have:
        return t.narrow(axis, 0, size).clone()
    reps = [1] * t.dim()
    reps[axis] = -(-size // have)
    return t.repeat(*reps).narrow(axis, 0, size).clone()


def current_size(example_inputs: Any, vary: str) -> int:
    """The size of ``vary`` in the inputs: the common size of that axis; ConfigError if
    no tensor has it or two disagree."""
    sizes = {t.shape[a] for t in tree_leaves(example_inputs) if (a := _axis(t, vary)) is not None}
    if not sizes:
        what = "a tensor input" if vary == "batch" else "an integer token input of 2 or more dims"
        raise ConfigError(f"fit: vary={vary!r} but no example input has that axis (expected {what}); "
                          f"pass make_inputs(size) to build the inputs of each size")
    if len(sizes) > 1:
        raise ConfigError(f"fit: the example inputs disagree on the {vary} size ({sorted(sizes)}); "
                          f"pass make_inputs(size) to build the inputs of each size")
    return int(sizes.pop())


def resize_inputs(example_inputs: Any, vary: str, size: int) -> Any:
    """The inputs with the ``vary`` axis of every tensor that has it made ``size`` long."""
    def one(x: Any) -> Any:
        axis = _axis(x, vary)
        return x if axis is None or x.shape[axis] == 0 else _resized(x, axis, size)
    return tree_map(one, example_inputs)


def inputs_maker(example_inputs: Any, vary: str, make_inputs: Callable[[int], Any] | None) -> Callable[[int], Any]:
    """``make_inputs`` if given, else resizing of ``example_inputs``."""
    if make_inputs is not None:
        if not callable(make_inputs):
            raise ConfigError(f"fit: make_inputs must be a callable size -> inputs, got {type(make_inputs).__name__}")
        return make_inputs
    current_size(example_inputs, vary)  # refuses inputs without the axis now, not at the first profile
    return lambda size: resize_inputs(example_inputs, vary, size)
