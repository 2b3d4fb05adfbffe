"""Shared helpers of the executor tests: zoo models, layer lists, plans, comparisons.

The layer lists come from the profiler's discovery (``memscale.profiler.discovery``), so
the plans look like the ones ``memscale.plan`` produces.
"""
from __future__ import annotations

import copy
from typing import Any, Iterable

import torch
from torch import nn

from memscale.profiler.discovery import discover_layers
from memscale.testing import models

# Zoo model -> (architecture style, output-head layer, MLP submodules to tile (suffixes)).
ZOO: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "gpt": ("GPT-style", "head", ("mlp",)),
    "vit": ("ViT-style", "head", ("mlp",)),
    "resnet": ("CNN", "fc", ()),
    "t5": ("encoder-decoder", "lm_head", ("ff",)),
    "encoder": ("encoder", "cls", ()),
    "llama": ("llama", "lm_head", ("mlp",)),
    "lstm": ("recurrent", "head", ()),
}

RTOL = 1e-5
ATOL = 1e-8


def build(name: str, dropout: float = 0.1, seed: int = 0) -> tuple[nn.Module, tuple[Any, ...]]:
    """A zoo model with dropout enabled where it has dropout, and its example inputs."""
    model = models.build(name, seed=seed)
    if hasattr(model.config, "dropout"):
        model = models.build(name, seed=seed, dropout=dropout)
    model.train()
    return model, models.example_inputs(name, model, batch=2, seq=16 if name != "resnet" and name != "vit" else None)


def layer_names(model: nn.Module) -> list[str]:
    """Layer paths by the profiler's discovery rule (the one discovery, not a copy)."""
    return [spec.name for spec in discover_layers(model)]


def checkpointable(model: nn.Module, names: Iterable[str]) -> list[str]:
    """The layers checkpointing can take (not in-place modules)."""
    from memscale.runtime.training.checkpoint import check_checkpointable
    from memscale.errors import ExecutorError
    out = []
    for n in names:
        try:
            check_checkpointable(model.get_submodule(n), n)
            out.append(n)
        except ExecutorError:
            pass
    return out


def mlp_names(model: nn.Module, suffixes: Iterable[str]) -> list[str]:
    ends = tuple(f".{s}" for s in suffixes)
    return [n for n, _ in model.named_modules() if ends and n.endswith(ends)]


def layer(name: str, techniques: Iterable[str], kind: str = "block", chunks: int = 1,
          tier: str = "device") -> dict[str, Any]:
    return {"name": name, "kind": kind, "techniques": sorted(techniques), "tile_chunks": chunks,
            "activation_tier": tier, "bytes_before": 0, "bytes_after": 0}


def step(model: nn.Module, inputs: tuple[Any, ...], seed: int = 1234) -> torch.Tensor:
    """One forward + backward with a fixed RNG seed; returns the detached loss."""
    for p in model.parameters():
        p.grad = None
    torch.manual_seed(seed)
    loss = model(*inputs)
    loss.backward()
    return loss.detach()


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL) -> bool:
    """|a - b| <= rtol * (|b| + max|b|) + 1e-8 elementwise: rtol relative to each element,
    with an absolute floor at rtol of the tensor's scale (elements near zero only carry
    the summation-order noise of their larger neighbours) and 1e-8 for gradients that
    are mathematically zero (e.g. attention key biases) and hold pure rounding noise."""
    scale = b.abs().max() if b.numel() else torch.tensor(0.0)
    return bool(((a - b).abs() <= rtol * (b.abs() + scale) + ATOL).all())


def assert_same_step(model: nn.Module, ref: nn.Module, inputs: tuple[Any, ...],
                     rtol: float = RTOL) -> None:
    """Loss, every parameter gradient and every buffer match after one step."""
    loss = step(model, inputs)
    loss_ref = step(ref, inputs)
    assert close(loss, loss_ref, rtol), f"loss {loss.item()} != {loss_ref.item()}"
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if q.grad is not None:
            diff = (p.grad - q.grad).abs().max().item()
            assert close(p.grad, q.grad, rtol), f"grad of {name}: max diff {diff}"
    for (name, b), (_, c) in zip(model.named_buffers(), ref.named_buffers()):
        assert torch.allclose(b.float(), c.float(), rtol=rtol, atol=1e-7), f"buffer {name}"


def twin(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def module_state(model: nn.Module) -> dict[str, Any]:
    """Everything apply/remove could touch: per-module attribute dict keys and hooks."""
    state = {}
    for name, m in model.named_modules():
        state[name] = (
            sorted(vars(m)),
            vars(m).get("forward"),
            dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks),
            dict(getattr(m, "_backward_pre_hooks", {})),
            {k: id(v) for k, v in m._parameters.items()},
            {k: id(v) for k, v in m._buffers.items()},
        )
    return state
