"""Watches the tokens each forward of a wrapped model processes against the plan's.

The plan sizes the activation reservation for ``Plan.reservation.tokens_per_step`` tokens
(batch x seq of the example inputs, or ``reservation.prefill_tokens``). A forward over more
tokens needs more activation memory than the plan reserved: :class:`TokenWatch` logs one
warning naming both figures and the fix, instead of exceeding the budget silently. Tokens
of a call are counted as the profiler counts the example's: batch x seq of the first tensor
argument in the forward's signature order.

Example:
    >>> import torch
    >>> from memscale.runtime.inference.step_tokens import call_tokens
    >>> call_tokens(torch.nn.Embedding(10, 4), (torch.zeros(2, 7, dtype=torch.long),), {})
    14
"""
from __future__ import annotations

import inspect
import logging

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from ...profiler.graph import batch_seq

log = logging.getLogger("memscale")


def call_tokens(module: nn.Module, args: tuple, kwargs: dict) -> int:
    """Tokens one call processes: batch x max(seq, 1) of its first tensor argument (0: no tensor)."""
    first = next((a for a in tree_leaves(args) if isinstance(a, torch.Tensor)), None)
    if first is None and kwargs:
        try:
            order = list(inspect.signature(module.forward).parameters)
        except (TypeError, ValueError):
            order = []
        named = sorted(kwargs, key=lambda k: order.index(k) if k in order else len(order))
        first = next((x for k in named for x in tree_leaves(kwargs[k]) if isinstance(x, torch.Tensor)), None)
    if first is None:
        return 0
    batch, seq = batch_seq((first,))
    return batch * max(seq, 1)


class TokenWatch:
    """A forward pre-hook on the model's root that warns once when a call processes more
    tokens than the plan's reservation is sized for. ``remove()`` takes it off."""

    def __init__(self, model: nn.Module, planned_tokens: int) -> None:
        self.planned = int(planned_tokens)
        self.warned = False
        self._handle = model.register_forward_pre_hook(self._pre, with_kwargs=True)

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.warned or self.planned <= 0:
            return None
        tokens = call_tokens(module, args, kwargs)
        if tokens > self.planned:
            self.warned = True
            log.warning("offloaded inference: a forward processes %d tokens per step, more than the %d the plan "
                        "reserved activation memory for; its activations may exceed memory_budget. Re-wrap with "
                        "example_inputs of that batch and length (or set reservation.prefill_tokens to %d)",
                        tokens, self.planned, tokens)
        return None

    def remove(self) -> None:
        self._handle.remove()
