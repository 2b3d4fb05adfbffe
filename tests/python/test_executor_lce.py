"""memscale.nn.linear_cross_entropy and the deferred head + loss."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import memscale.nn as mnn
from executor_testlib import layer
from memscale.errors import ExecutorError
from memscale.runtime.training import apply_plan
from memscale.runtime.training.head_loss import DeferredLogits


def _case(bias: bool = True, n: int = 37, d: int = 24, vocab: int = 300, seed: int = 0):
    torch.manual_seed(seed)
    head = nn.Linear(d, vocab, bias=bias)
    hidden = torch.randn(n, d, requires_grad=True)
    targets = torch.randint(0, vocab, (n,))
    targets[::5] = -100
    return head, hidden, targets


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunks", [1, 4, 37, 100])
def test_matches_cross_entropy(reduction: str, bias: bool, chunks: int) -> None:
    head, hidden, targets = _case(bias)
    loss = mnn.linear_cross_entropy(hidden, head, targets, chunks=chunks, reduction=reduction)
    ref = F.cross_entropy(head(hidden), targets, reduction=reduction)
    weight = torch.rand_like(ref) if reduction == "none" else torch.tensor(1.7)
    params = [hidden, *head.parameters()]
    grads = torch.autograd.grad((loss * weight).sum(), params)
    grads_ref = torch.autograd.grad((ref * weight).sum(), params)
    assert torch.allclose(loss, ref, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, grads_ref):
        assert torch.allclose(g, r, rtol=1e-5, atol=1e-7)


def test_batched_shape_and_auto_chunks() -> None:
    torch.manual_seed(0)
    head = nn.Linear(16, 50)
    hidden = torch.randn(3, 7, 16, requires_grad=True)
    targets = torch.randint(0, 50, (3, 7))
    per_token = mnn.linear_cross_entropy(hidden, head, targets, reduction="none")
    assert per_token.shape == (3, 7)
    loss = mnn.linear_cross_entropy(hidden, head, targets)
    ref = F.cross_entropy(head(hidden).flatten(0, 1), targets.flatten())
    assert torch.allclose(loss, ref, rtol=1e-6)


def test_weight_as_tensor_tied_and_frozen_parts() -> None:
    torch.manual_seed(0)
    emb = nn.Embedding(40, 8)  # tied: the head weight is the embedding matrix
    ids = torch.randint(0, 40, (12,))
    targets = torch.randint(0, 40, (12,))
    hidden = torch.tanh(emb(ids))
    loss = mnn.linear_cross_entropy(hidden, emb.weight, targets, chunks=3)
    (g,) = torch.autograd.grad(loss, [emb.weight])
    hidden = torch.tanh(emb(ids))
    (g_ref,) = torch.autograd.grad(F.cross_entropy(hidden @ emb.weight.t(), targets), [emb.weight])
    assert torch.allclose(g, g_ref, rtol=1e-5, atol=1e-7)
    head = nn.Linear(8, 40).requires_grad_(False)
    h = torch.randn(5, 8, requires_grad=True)
    t = torch.randint(0, 40, (5,))
    (gh,) = torch.autograd.grad(mnn.linear_cross_entropy(h, head, t, chunks=2), [h])
    (gh_ref,) = torch.autograd.grad(F.cross_entropy(head(h), t), [h])
    assert torch.allclose(gh, gh_ref, rtol=1e-5, atol=1e-7)


def test_all_ignored_is_nan_like_torch() -> None:
    head, hidden, _ = _case()
    targets = torch.full((hidden.shape[0],), -100)
    loss = mnn.linear_cross_entropy(hidden, head, targets, chunks=3)
    assert torch.isnan(loss) and torch.isnan(F.cross_entropy(head(hidden), targets))
    (g,) = torch.autograd.grad(loss, [hidden])
    assert torch.equal(g, torch.zeros_like(g))


def test_bfloat16_close_to_reference() -> None:
    head, hidden, targets = _case()
    head = head.to(torch.bfloat16)
    h = hidden.detach().to(torch.bfloat16).requires_grad_()
    loss = mnn.linear_cross_entropy(h, head, targets, chunks=4)
    ref = F.cross_entropy(head(h).float(), targets)
    assert loss.dtype == torch.bfloat16
    assert abs(loss.float().item() - ref.item()) < 2e-2
    (g,) = torch.autograd.grad(loss, [head.weight])
    assert g.dtype == torch.bfloat16


def test_second_backward_refused_in_mean_mode() -> None:
    head, hidden, targets = _case()
    loss = mnn.linear_cross_entropy(hidden, head, targets, chunks=2)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_bad_arguments_name_themselves() -> None:
    head, hidden, targets = _case()
    with pytest.raises(ValueError, match="reduction"):
        mnn.linear_cross_entropy(hidden, head, targets, reduction="avg")
    with pytest.raises(ValueError, match="chunks"):
        mnn.linear_cross_entropy(hidden, head, targets, chunks=0)
    with pytest.raises(ValueError, match="targets: shape"):
        mnn.linear_cross_entropy(hidden, head, targets[:-1])
    with pytest.raises(TypeError, match="targets: expected an integer"):
        mnn.linear_cross_entropy(hidden, head, targets.float())
    with pytest.raises(ValueError, match="head: weight shape"):
        mnn.linear_cross_entropy(hidden, nn.Linear(5, 9), targets)
    with pytest.raises(TypeError, match="head: expected"):
        mnn.linear_cross_entropy(hidden, "head", targets)


# -- deferred head + loss inside a model's forward ---------------------------------------

class LM(nn.Module):
    """HF-style: shift inside forward, float upcast, loss via CrossEntropyLoss."""

    def __init__(self, post: str = "") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(64, 16)
        self.body = nn.Linear(16, 16)
        self.lm_head = nn.Linear(16, 64)
        self.post = post

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **kw) -> dict:
        logits = self.lm_head(torch.tanh(self.body(self.emb(input_ids))))
        if self.post == "softcap":
            logits = torch.tanh(logits / 30.0) * 30.0
        if labels is None:
            return {"logits": logits}
        shift = logits[..., :-1, :].contiguous().float()
        loss = nn.CrossEntropyLoss()(shift.view(-1, shift.size(-1)), labels[..., 1:].reshape(-1))
        return {"loss": loss, "logits": logits}


def _lm_plan() -> dict:
    return {"layers": [layer("lm_head", ["tile"], kind="lm_head", chunks=3)]}


def test_deferred_head_matches_and_never_builds_logits() -> None:
    model, ref = LM(), LM()
    ids = torch.randint(0, 64, (2, 9))
    labels = torch.randint(0, 64, (2, 9))
    full_calls = []
    model.lm_head.register_forward_hook(lambda m, i, o: full_calls.append(type(o)))
    with apply_plan(model, _lm_plan()):
        out = model(ids, labels=labels)
        assert full_calls == [DeferredLogits]
        assert isinstance(out["logits"], DeferredLogits)
        out["loss"].backward()
        ref_out = ref(ids, labels=labels)
        ref_out["loss"].backward()
        assert torch.allclose(out["loss"], ref_out["loss"], rtol=1e-6)
        for p, q in zip(model.parameters(), ref.parameters()):
            assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7)
        # without labels: ordinary logits
        plain = model(ids)["logits"]
        assert type(plain) is torch.Tensor
        assert torch.allclose(plain, ref(ids)["logits"])


def test_logits_used_after_forward_materialise_with_warning(caplog) -> None:
    model, ref = LM(), LM()
    ids = torch.randint(0, 64, (2, 9))
    labels = torch.randint(0, 64, (2, 9))
    with apply_plan(model, _lm_plan()):
        out = model(ids, labels=labels)
        with caplog.at_level(logging.WARNING, logger="memscale"):
            pred = out["logits"].argmax(-1)
            probs = torch.softmax(out["logits"], -1)
        assert "materialising the full logits" in caplog.text
        assert torch.equal(pred, ref(ids)["logits"].argmax(-1))
        assert probs.shape == (2, 9, 64)


def test_other_use_inside_forward_is_refused_clearly() -> None:
    model = LM(post="softcap")
    ids = torch.randint(0, 64, (2, 9))
    with apply_plan(model, _lm_plan()):
        with pytest.raises(ExecutorError, match=r"LM\.forward uses its logits in 'Tensor\.__truediv__'"):
            model(ids, labels=torch.randint(0, 64, (2, 9)))
        model(ids)  # without labels the model still works


def test_measured_peak_far_below_untiled() -> None:
    """Counting allocator: the full logits (and their softmax/grad copies) never exist."""
    import memscale

    torch.manual_seed(0)
    n, d, vocab = 512, 32, 8000
    hidden = torch.randn(n, d, requires_grad=True)
    weight = torch.randn(vocab, d, requires_grad=True)
    targets = torch.randint(0, vocab, (n,))
    with memscale.track_memory("cpu") as untiled:
        torch.autograd.grad(F.cross_entropy(F.linear(hidden, weight), targets), [hidden, weight])
    with memscale.track_memory("cpu") as tiled:
        torch.autograd.grad(mnn.linear_cross_entropy(hidden, weight, targets, chunks=16),
                            [hidden, weight])
    logits = n * vocab * 4
    assert untiled.peak_bytes >= 2 * logits
    # weight grad + hidden grad + one slice of logits, plus small per-row vectors
    bound = weight.numel() * 4 + hidden.numel() * 4 + logits // 16 + 64 * n
    assert tiled.peak_bytes <= bound, (tiled.peak_bytes, bound)
    assert tiled.peak_bytes < 0.25 * untiled.peak_bytes
