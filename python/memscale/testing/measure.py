"""The measured peak of one training step, the figure predictions are compared with.

A step's peak is every byte resident during it (docs/memory-model.md, DESIGN "Measuring
memory"): what is resident when it starts -- parameters, buffers, optimizer state, the
batch -- plus the counting allocator's peak while it runs forward, loss, backward and the
optimizer step. Two warm-up steps first create the optimizer state.

Example:
    >>> from memscale.testing import models
    >>> from memscale.testing.measure import measured_step_peak
    >>> model = models.build("gpt", n_layers=1)
    >>> measured_step_peak(model, models.example_inputs("gpt", model, batch=2, seq=16)) > 0
    True
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from ..memory import track_memory


def _bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tree_leaves(tensors) if torch.is_tensor(t) and t.dim() > 0)


def step_loss(output: Any) -> torch.Tensor:
    """The loss a model computed itself: a scalar tensor, or a ``.loss`` (Hugging Face outputs)."""
    if isinstance(output, torch.Tensor):
        return output
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, dict):
        loss = output.get("loss")
    if not isinstance(loss, torch.Tensor):
        raise ValueError(f"the model's output ({type(output).__name__}) holds no loss; pass loss_fn")
    return loss


def measured_step_peak(model: nn.Module, inputs: Any, loss_fn: Callable[[Any], torch.Tensor] | None = None,
                       autocast: torch.dtype | None = None, foreach: bool | None = None, *,
                       seed: int | None = None,
                       check: Callable[[int, torch.Tensor, nn.Module], None] | None = None) -> int:
    """Peak bytes of one AdamW training step of ``model`` on ``inputs`` (a tuple of positional
    arguments or a dict of keyword arguments), everything resident at its start included.

    ``loss_fn(output)`` computes the loss outside the model (default: the model's own loss),
    as the common loop does: ``logits = model(x); loss = loss_fn(logits); loss.backward()``
    (the output stays referenced through backward);
    ``autocast`` runs forward and loss under ``torch.autocast(device, autocast)``;
    ``foreach`` is AdamW's (None, the default: torch's default for the device, what a loop
    that does not set it runs; wrap's ``optimizer=`` says which one a plan assumes);
    ``seed``: ``torch.manual_seed(seed + i)`` before step ``i`` (dropout masks that two runs share);
    ``check(i, loss, model)`` is called after the backward of each warm-up step ``i`` (0, 1),
    before the optimizer step (compare the loss and gradients with another run there: the
    measured step runs no check, so its comparisons count nothing).
    """
    args, kwargs = (inputs, {}) if isinstance(inputs, (tuple, list)) else ((), dict(inputs))
    device = next(model.parameters()).device
    loss_of = loss_fn if loss_fn is not None else step_loss
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], foreach=foreach)

    def step(i: int) -> None:
        if seed is not None:
            torch.manual_seed(seed + i)
        with torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext():
            output = model(*args, **kwargs)
            loss = loss_of(output)
        if loss_fn is None:
            del output  # the model's own loss: the loop keeps the loss, not the output
        loss.backward()
        if check is not None and i < 2:
            check(i, loss.detach(), model)
        del loss
        output = None
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(2):  # the first step creates the optimizer state
        step(i)
    resident = _bytes(list(model.parameters())) + _bytes(list(model.buffers())) + _bytes((args, kwargs))
    resident += sum(_bytes(list(state.values())) for state in opt.state.values())
    with track_memory(device) as tracked:
        step(2)
    return resident + tracked.peak_bytes
