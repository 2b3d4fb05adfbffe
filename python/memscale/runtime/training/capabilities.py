"""What the training runtime can apply, per layer: the ``cannot`` field of a ModelGraph layer.

The engine plans only techniques a layer is capable of (rule ``capability.unsupported``),
so every plan it returns can be applied. The checks here are the executor's own
(``check_checkpointable``, ``check_tileable``, ``check_head``), called through their
``*_refusal`` predicates, so what the profiler records and what the executor accepts
cannot drift apart.

* ``checkpoint``: not on a module that overwrites its input (``inplace=True``).
* ``tile``: kind ``mlp``: only position-wise modules (:mod:`.tiling`); kind ``lm_head``:
  only a head + loss the executor can fuse in this call convention (:mod:`.head_loss`:
  an ``nn.Linear`` makes the logits, forward is called with ``labels``, no ``loss_fn``
  outside); other kinds: never.
* ``offload_weights``: not in training unless the optimizer is offloadable
  (``wrap(..., optimizer=opt, offload_optimizer=True)``): the training pager
  (:mod:`.weight_paging`) needs the offloaded step to update the home copy. Then
  :func:`training_paging_cannot` says which layers still cannot: an output head (the fused
  head + loss reads its weight after the head's forward returned) and layers whose weights
  are tied to another layer's (read by two layers of the step).
* ``offload_activations``: every layer.

Example:
    >>> import torch
    >>> from memscale.runtime.training.capabilities import training_cannot
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(inplace=True))
    >>> sorted(training_cannot(model, model[1], "1", "other", tileable=[]))
    ['checkpoint', 'offload_weights']
"""
from __future__ import annotations

from typing import Any

from torch import nn

from .checkpoint import checkpoint_refusal
from .head_loss import head_loss_refusal
from .tiling import tiling_refusal

#: Why no training layer can offload weights.
NO_TRAINING_WEIGHT_EXECUTOR = ("the training runtime keeps weights resident (the weight pager serves "
                               "inference only); no training weight executor exists")


#: Why a layer's weights cannot be paged in training even with the optimizer offloaded.
HEAD_READ_OUTSIDE = ("the output head's weight is read outside its forward (the fused head + loss) and "
                     "stays resident while training")
TIED_WEIGHTS = "its weights are tied to another layer's, read twice in the step; they stay resident while training"


def training_paging_cannot(model: nn.Module, name: str, kind: str) -> str | None:
    """Why the training pager cannot page layer ``name`` (None: it can), for a model whose
    optimizer the runtime streams (the cases in the module docstring)."""
    if kind == "lm_head":
        return HEAD_READ_OUTSIDE
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return None
    # Tied: another module outside this layer holds a parameter on the same storage (the
    # same Parameter object too, as Hugging Face ties an embedding and its head).
    inside = {id(m) for m in module.modules()}
    mine = {p.untyped_storage().data_ptr() for p in module.parameters() if p.numel()}
    for other in model.modules():
        if id(other) in inside:
            continue
        if any(p.numel() and p.untyped_storage().data_ptr() in mine for p in other.parameters(recurse=False)):
            return TIED_WEIGHTS
    return None


def training_cannot(model: nn.Module, module: nn.Module, name: str, kind: str, *,
                    tileable: list[str], example_args: tuple = (), example_kwargs: dict | None = None,
                    loss_outside: bool = False) -> dict[str, str]:
    """Techniques the training runtime cannot apply to layer ``name`` -> why."""
    cannot: dict[str, str] = {"offload_weights": NO_TRAINING_WEIGHT_EXECUTOR}
    reason = checkpoint_refusal(module, name)
    if reason is not None:
        cannot["checkpoint"] = reason
    if tileable:  # without an axis the engine's own rule (tile.not_tileable) rejects it
        if kind == "lm_head":
            reason = head_loss_refusal(model, module, name, example_args=example_args,
                                       example_kwargs=example_kwargs, loss_outside=loss_outside)
        elif kind == "mlp":
            reason = tiling_refusal(module, name)
        else:
            reason = (f"layer {name!r}: the training runtime tiles layers of kind 'mlp' and the "
                      f"output head (kind 'lm_head'), not kind {kind!r}")
        if reason is not None:
            cannot["tile"] = reason
    return cannot


def capabilities_of(model: nn.Module, example_args: tuple, example_kwargs: dict, *,
                    training: bool, loss_outside: bool = False) -> Any:
    """The profiler's hook: a function ``(module, name, kind, tileable) -> cannot`` for
    ``model`` in this call convention. Inference graphs record nothing: the inference
    runtime (weight pager, KV cache tiers) applies every technique the engine plans there."""
    def cannot(module: nn.Module, name: str, kind: str, tileable: list[str]) -> dict[str, str]:
        if not training:
            return {}
        return training_cannot(model, module, name, kind, tileable=tileable, example_args=example_args,
                               example_kwargs=example_kwargs, loss_outside=loss_outside)
    return cannot

