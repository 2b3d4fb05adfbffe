"""Checkpointing: kwargs, non-tensor outputs, RNG, buffers, no-grad and counting recomputes."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from memscale.runtime.training.checkpoint import checkpoint_module


@dataclass
class Output:  # HF-style dataclass output
    hidden: torch.Tensor
    extra: dict
    note: str


class KwBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.drop = nn.Dropout(0.5)
        self.calls = 0

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor | None = None, scale: float = 1.0,
                use_reentrant: str = "a kwarg named like checkpoint's own") -> Output:
        self.calls += 1
        h = self.drop(torch.tanh(self.fc(x))) * scale
        if mask is not None:
            h = h * mask
        return Output(hidden=h, extra={"pair": (h.sum(), 3), "tag": use_reentrant}, note="ok")


def _run(block: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> tuple:
    torch.manual_seed(7)
    out = block(x, mask=mask, scale=0.5, use_reentrant="kept")
    loss = out.hidden.square().sum() + out.extra["pair"][0]
    grads = torch.autograd.grad(loss, [x, mask, *block.parameters()])
    return out, grads


def test_kwargs_and_non_tensor_outputs() -> None:
    torch.manual_seed(0)
    block = KwBlock()
    ref = copy.deepcopy(block)
    x = torch.randn(4, 8, requires_grad=True)
    mask = torch.rand(4, 8, requires_grad=True)
    patch = checkpoint_module(block, "b")
    out, grads = _run(block, x, mask)
    out_ref, grads_ref = _run(ref, x, mask)
    assert isinstance(out, Output) and out.note == "ok" and out.extra["tag"] == "kept"
    assert out.extra["pair"][1] == 3
    assert torch.equal(out.hidden, out_ref.hidden)  # same dropout mask
    for g, r in zip(grads, grads_ref):
        assert torch.allclose(g, r, rtol=1e-6, atol=1e-7)
    assert block.calls == 2  # forward + one recompute in backward
    patch.remove()
    assert "forward" not in vars(block)


def test_tuple_outputs_and_multiple_tensor_args() -> None:
    lstm = nn.LSTM(8, 8, batch_first=True)
    ref = copy.deepcopy(lstm)
    x = torch.randn(2, 5, 8, requires_grad=True)
    h0 = (torch.randn(1, 2, 8), torch.randn(1, 2, 8))
    patch = checkpoint_module(lstm, "lstm")
    out, (h, c) = lstm(x, h0)
    out_r, (h_r, c_r) = ref(x, h0)
    (out.sum() + h.sum() + c.sum()).backward()
    (out_r.sum() + h_r.sum() + c_r.sum()).backward()
    for p, q in zip(lstm.parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7)
    patch.remove()


def test_no_grad_runs_plain_forward() -> None:
    block = KwBlock().eval()
    patch = checkpoint_module(block, "b")
    with torch.no_grad():
        block(torch.randn(2, 8))
    assert block.calls == 1
    patch.remove()


def test_batchnorm_statistics_updated_once() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    ref = copy.deepcopy(net)
    x = torch.randn(2, 3, 8, 8)
    patch = checkpoint_module(net, "net")
    for _ in range(3):
        net(x).square().sum().backward()
        ref(x).square().sum().backward()
    for (k, v), r in zip(net.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(v, r), k
    patch.remove()


def test_checkpoint_frees_inner_activations() -> None:
    """Only the layer input is kept: nothing saved inside the layer survives forward."""
    torch.manual_seed(0)
    deep = nn.Sequential(*[nn.Sequential(nn.Linear(64, 64), nn.GELU()) for _ in range(4)])
    x = torch.randn(32, 64, requires_grad=True)

    def saved_bytes(module: nn.Module) -> int:
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(x).sum()
        return total
    plain = saved_bytes(deep)
    patch = checkpoint_module(deep, "deep")
    kept = saved_bytes(deep)
    patch.remove()
    assert kept == x.numel() * 4  # the checkpoint boundary only
    assert plain > 4 * kept
