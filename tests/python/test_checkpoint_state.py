"""A checkpointed layer whose forward receives Python state and changes it (a KV cache object
it appends to, a dict of flags it sets) recomputes on the state its forward saw, and the
recompute leaves the state as it found it (issue: Hugging Face T5 at 60%, "A different
number of tensors was saved during the original forward and recomputation")."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from memscale.errors import ExecutorError
from memscale.runtime.training.checkpoint import checkpoint_module


class Cache:
    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.updated: dict[int, bool] = {}


class Layer(nn.Module):
    """Appends its keys to ``cache`` and attends over everything cached (another path the
    second time if the cache already holds them)."""

    def __init__(self) -> None:
        super().__init__()
        self.k, self.q = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        if not cache.updated.get(0):
            cache.keys = [*cache.keys, self.k(x)]
            cache.updated[0] = True
        keys = torch.cat(cache.keys, dim=1)
        return torch.softmax(self.q(x) @ keys.transpose(1, 2), -1) @ keys


def step(layer: Layer) -> tuple[dict[str, torch.Tensor], Cache]:
    cache = Cache()
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    layer(x, cache=cache).pow(2).sum().backward()
    return {n: p.grad.clone() for n, p in layer.named_parameters()}, cache


def test_the_recompute_sees_the_state_the_forward_saw_and_leaves_it_unchanged() -> None:
    torch.manual_seed(0)
    ref = Layer()
    expected, ref_cache = step(ref)
    torch.manual_seed(0)
    layer = Layer()
    patch = checkpoint_module(layer, "layer")
    try:
        grads, cache = step(layer)
    finally:
        patch.remove()
    for name in expected:
        torch.testing.assert_close(grads[name], expected[name], rtol=1e-5, atol=1e-6)
    assert len(cache.keys) == len(ref_cache.keys) == 1 and cache.updated == {0: True}
    torch.testing.assert_close(cache.keys[0], ref_cache.keys[0])


class InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, cache: dict) -> torch.Tensor:
        y = self.lin(x)
        cache["buf"][:, : y.shape[1]].copy_(y.detach())
        return y


def test_a_forward_that_writes_its_state_in_place_is_refused_naming_the_layer() -> None:
    layer = InPlace()
    patch = checkpoint_module(layer, "static")
    try:
        with pytest.raises(ExecutorError, match="'static'.*in place"):
            layer(torch.randn(2, 5, 8, requires_grad=True), cache={"buf": torch.zeros(2, 10, 8)})
    finally:
        patch.remove()
