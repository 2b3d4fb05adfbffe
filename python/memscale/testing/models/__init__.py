"""Reference architectures in plain torch, for tests and benchmarks.

Each module has ``build(seed=0, **overrides) -> nn.Module`` (deterministic from ``seed``;
overrides are fields of its config dataclass, the config is ``model.config``) and
``example_inputs(model, batch=2, seq=None, labels=True, seed=0, device=None) -> tuple``
(positional arguments of ``model.forward``; with ``labels=True`` the forward returns a
scalar mean cross-entropy loss, otherwise logits).

Example:
    >>> from memscale.testing import models
    >>> model = models.build("gpt", n_layers=2)
    >>> loss = model(*models.example_inputs("gpt", model, batch=2, seq=16))
    >>> loss.backward()
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from . import encoder, gpt, llama, lstm, resnet, t5, vit

Factory = Callable[..., nn.Module]
InputsFn = Callable[..., tuple]

# name -> (factory, example_inputs_fn)
MODELS: dict[str, tuple[Factory, InputsFn]] = {
    "gpt": (gpt.build, gpt.example_inputs),
    "encoder": (encoder.build, encoder.example_inputs),
    "vit": (vit.build, vit.example_inputs),
    "resnet": (resnet.build, resnet.example_inputs),
    "lstm": (lstm.build, lstm.example_inputs),
    "t5": (t5.build, t5.example_inputs),
    "llama": (llama.build, llama.example_inputs),
}


def _lookup(name: str) -> tuple[Factory, InputsFn]:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"model name must be one of {sorted(MODELS)}, got {name!r}") from None


def build(name: str, **overrides: Any) -> nn.Module:
    """Build reference model ``name`` (a key of ``MODELS``) with config overrides (and ``seed``)."""
    return _lookup(name)[0](**overrides)


def example_inputs(name: str, model: nn.Module, **kwargs: Any) -> tuple[Any, ...]:
    """Example positional inputs for ``model`` built by ``build(name)``; kwargs: batch, seq, labels, seed, device."""
    return _lookup(name)[1](model, **kwargs)


__all__ = ["MODELS", "build", "example_inputs", "encoder", "gpt", "llama", "lstm", "resnet", "t5", "vit"]
