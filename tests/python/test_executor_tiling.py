"""Sequence-chunked MLP tiling."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from memscale.errors import ExecutorError
from memscale.runtime.training.tiling import tile_module


def _mlp(d: int = 16, ff: int = 64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.LayerNorm(d), nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))


@pytest.mark.parametrize("shape,chunks", [((2, 12, 16), 4), ((2, 12, 16), 5), ((24, 16), 3),
                                          ((2, 3, 16), 8), ((1, 2, 7, 16), 3)])
def test_outputs_and_grads_equal(shape, chunks) -> None:
    mlp = _mlp()
    ref = copy.deepcopy(mlp)
    patch = tile_module(mlp, chunks, "mlp")
    x = torch.randn(*shape, requires_grad=True)
    y, y_ref = mlp(x), ref(x)
    assert torch.allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, *mlp.parameters()], g)
    grads_ref = torch.autograd.grad(y_ref, [x, *ref.parameters()], g)
    for a, b in zip(grads, grads_ref):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    patch.remove()
    assert "forward" not in vars(mlp)


def test_only_one_slice_of_intermediates_is_saved() -> None:
    mlp = _mlp(16, 256)
    x = torch.randn(4, 64, 16, requires_grad=True)

    def saved_bytes() -> int:
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            mlp(x)
        return total
    plain = saved_bytes()
    patch = tile_module(mlp, 8, "mlp")
    tiled = saved_bytes()
    patch.remove()
    # tiled keeps the input slices (views of x) only; the 256-wide intermediates are gone
    assert tiled <= x.numel() * 4
    assert plain > 10 * tiled


def test_no_grad_path_slices_too() -> None:
    mlp = _mlp()
    ref = copy.deepcopy(mlp)
    patch = tile_module(mlp, 3, "mlp")
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        assert torch.allclose(mlp(x), ref(x), rtol=1e-6, atol=1e-6)
    patch.remove()


def test_runtime_argument_errors() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
            return self.fc(x) if y is None else self.fc(x) + y

    two = Two()
    patch = tile_module(two, 2, "two")
    with pytest.raises(ExecutorError, match="exactly one tensor"):
        two(torch.randn(2, 4, 4), torch.randn(2, 4, 4))
    with pytest.raises(ExecutorError, match="at least 2 dims"):
        two(torch.randn(4))
    patch.remove()


def test_refusals() -> None:
    with pytest.raises(ExecutorError, match="GRU"):
        tile_module(nn.Sequential(nn.Linear(4, 4), nn.GRU(4, 4)), 2, "x")
    with pytest.raises(ExecutorError, match="GLU"):
        tile_module(nn.Sequential(nn.Linear(4, 8), nn.GLU(dim=1)), 2, "x")
    with pytest.raises(ExecutorError, match="tile_chunks=0"):
        tile_module(_mlp(), 0, "x")
