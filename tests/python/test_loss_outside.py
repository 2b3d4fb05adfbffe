"""Issue 13: the commonest PyTorch loop, with the loss outside the model.

A GPT-style model with an untied output head whose forward returns logits (or
``(logits, aux_loss)``), trained with ``F.cross_entropy(model(x).flatten(0, 1), y.flatten())``.
The head + loss cannot be fused there (the forward takes no labels), and training keeps
weights resident: the profiler records both as capabilities (``layer.cannot``) and the
engine plans within them. So at every budget from the unoptimized peak down to the
stated minimum, ``wrap`` either refuses with ``InfeasibleBudgetError`` (whose minimum then
fits) or applies a plan whose measured step peak is within 1.05 x the budget, with the
unwrapped model's gradients; and ``memscale.plan`` on the profiled graph agrees with
``wrap``.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import memscale
from memscale.api import plan_of, unwrap, wrap

VOCAB, D, HEADS, LAYERS, BATCH, SEQ = 4096, 64, 4, 4, 4, 128


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.mlp = nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, D))
        return x + self.mlp(self.ln2(x))


class UntiedGPT(nn.Module):
    """Token + position embeddings, blocks, final norm, an untied head; returns logits."""

    def __init__(self, aux: bool = False) -> None:
        super().__init__()
        self.aux = aux
        self.tok, self.pos = nn.Embedding(VOCAB, D), nn.Embedding(SEQ, D)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln_f = nn.LayerNorm(D)
        self.head = nn.Linear(D, VOCAB, bias=False)

    def forward(self, x: torch.Tensor):
        h = self.tok(x) + self.pos(torch.arange(x.shape[1], device=x.device))
        for block in self.blocks:
            h = block(h)
        h = self.ln_f(h)
        logits = self.head(h)
        if self.aux:
            return logits, 1e-3 * h.pow(2).mean()
        return logits


def loss_of(out, y: torch.Tensor) -> torch.Tensor:
    if isinstance(out, tuple):
        logits, aux = out
        return F.cross_entropy(logits.flatten(0, 1), y.flatten()) + aux
    return F.cross_entropy(out.flatten(0, 1), y.flatten())


def step_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, aux: bool) -> tuple[torch.Tensor, object]:
    """The two loops: ``F.cross_entropy(model(x).flatten(0, 1), y.flatten())`` (the logits are
    a temporary), and ``logits, aux_loss = model(x)`` (the logits stay alive through backward)."""
    if aux:
        logits, aux_loss = model(x)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten()) + aux_loss, logits
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten()), None


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=g), torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)


def build(aux: bool) -> UntiedGPT:
    torch.manual_seed(0)
    return UntiedGPT(aux)


def run(aux: bool, budget: int | None, steps: int = 2,
        ref: list[dict[str, torch.Tensor]] | None = None) -> tuple[int, list[dict[str, torch.Tensor]]]:
    """The plain loop, wrapped at ``budget`` (None: unwrapped). Returns the measured peak of
    the steps, counting everything resident in them (the model, the batch, the gradients
    and the optimizer state), and, unwrapped, each step's gradients; wrapped, the
    gradients are compared with ``ref`` inside the loop (so no copies stay resident)."""
    grads = []
    with memscale.track_memory("cpu") as tracker:
        model = build(aux)
        x, y = batch()
        if budget is not None:
            wrap(model, memscale.Config(memory_budget=budget), example_inputs=(x,))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        tracker.reset_peak()
        try:
            for step in range(steps):
                opt.zero_grad(set_to_none=True)
                loss, kept = step_loss(model, x, y, aux)
                loss.backward()
                del loss, kept
                if ref is None:
                    grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})
                else:
                    assert_same_grads(model, ref[step], step)
                opt.step()
            peak = tracker.peak_bytes
        finally:
            if budget is not None:
                unwrap(model)
    return peak, grads


def stated_minimum(aux: bool) -> int:
    with pytest.raises(memscale.InfeasibleBudgetError) as refusal:
        wrap(build(aux), memscale.Config(memory_budget=1), example_inputs=(batch()[0],))
    return refusal.value.min_budget_bytes


def assert_same_grads(model: nn.Module, ref: dict[str, torch.Tensor], step: int) -> None:
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[name], rtol=1e-5, atol=1e-7,
                                   msg=lambda m: f"step {step}, {name}: {m}")


@pytest.mark.parametrize("aux", [False, True], ids=["logits", "logits_aux"])
def test_loss_outside_fits_every_budget_down_to_the_stated_minimum(aux: bool) -> None:
    _, ref = run(aux, None)
    unoptimized, _ = run(aux, None, ref=ref)
    # The profiler cannot see whether the loop keeps the logits alive through backward, so it
    # counts a loss outside as if it did (2 x the logits): for the temporary-logits loop the
    # stated minimum may exceed what the unwrapped loop measures (then 100% is refused).
    minimum = stated_minimum(aux)
    assert minimum < 1.1 * unoptimized, (minimum, unoptimized)
    # 100% down to the stated minimum in 10% steps, one step below it (a refusal), and the minimum
    budgets = [int(unoptimized * f / 10) for f in range(10, 0, -1)]
    below = next(i for i, b in enumerate(budgets) if b < minimum)
    results = []
    for budget in budgets[:below + 1] + [minimum]:
        try:
            peak, _ = run(aux, budget, ref=ref)
        except memscale.InfeasibleBudgetError as refusal:
            assert refusal.min_budget_bytes == minimum  # the same minimum at every budget
            assert budget < minimum
            results.append((round(budget / unoptimized, 2), "refused", refusal.min_budget_bytes))
            budget = refusal.min_budget_bytes
            peak, _ = run(aux, budget, ref=ref)
        else:
            assert budget >= minimum
        results.append((round(budget / unoptimized, 2), peak, round(peak / budget, 3)))
        assert peak <= 1.05 * budget, (budget, peak, results)
    print(f"\n{'logits_aux' if aux else 'logits'}: unoptimized {unoptimized}, stated minimum {minimum} "
          f"({minimum / unoptimized:.2f}); (budget share, peak, peak/budget): {results}")


@pytest.mark.parametrize("aux", [False, True], ids=["logits", "logits_aux"])
def test_the_graph_records_what_the_runtime_cannot_do(aux: bool) -> None:
    x, _ = batch()
    graph = memscale.profile(build(aux), (x,), training=True, optimizer="adamw")
    head = next(layer for layer in graph.layers if layer.name == "head")
    assert head.kind == "lm_head"
    assert "tile" in head.cannot and "labels" in head.cannot["tile"]
    assert all("offload_weights" in layer.cannot for layer in graph.layers)
    inference = memscale.profile(build(aux), (x,), training=False)
    assert all(not layer.cannot for layer in inference.layers)


@pytest.mark.parametrize("fraction", [0.8, 0.6, 0.0])
def test_plan_and_wrap_agree(fraction: float) -> None:
    x, _ = batch()
    unoptimized, _ = run(False, None, steps=1)
    budget = max(1, int(unoptimized * fraction))
    graph = memscale.profile(build(False), (x,), training=True, optimizer="adamw")
    cfg = memscale.Config(memory_budget=budget)
    model = build(False)
    try:
        planned = memscale.plan(graph, cfg)
    except memscale.InfeasibleBudgetError as refusal:
        with pytest.raises(memscale.InfeasibleBudgetError) as wrapped:
            wrap(model, cfg, example_inputs=(x,))
        assert wrapped.value.min_budget_bytes == refusal.min_budget_bytes
        return
    wrap(model, cfg, example_inputs=(x,))
    try:
        applied = json.loads(plan_of(model).to_json())
    finally:
        unwrap(model)
    expected = json.loads(planned.to_json())
    for key in ("layers", "predicted_peak_bytes", "budget_bytes", "unoptimized_peak_bytes", "skipped"):
        assert applied[key] == expected[key], key
    assert not any("offload_weights" in layer["techniques"] for layer in applied["layers"])
    assert not any("tile" in layer["techniques"] for layer in applied["layers"] if layer["name"] == "head")


def test_offload_weights_on_in_training_is_the_engines_config_error() -> None:
    x, _ = batch()
    with pytest.raises(memscale.ConfigError, match='techniques.offload_weights: "on", but no layer'):
        wrap(build(False), memscale.Config(memory_budget=1 << 40, techniques={"offload_weights": "on"}),
             example_inputs=(x,))


def test_loss_fn_marks_the_head_not_fusable_even_with_labels() -> None:
    from memscale.runtime.training.capabilities import training_cannot

    class WithLabels(UntiedGPT):
        def forward(self, x, labels=None):  # noqa: D401 - a forward that could take labels
            return super().forward(x)

    model = WithLabels()
    x, y = batch()
    assert "tile" not in training_cannot(model, model.head, "head", "lm_head", tileable=["seq"],
                                         example_args=(x, y))
    assert "loss_fn" in training_cannot(model, model.head, "head", "lm_head", tileable=["seq"],
                                        example_args=(x, y), loss_outside=True)["tile"]
    graph = memscale.profile(model, (x, y), loss_fn=loss_of)
    assert "loss_fn" in next(layer for layer in graph.layers if layer.name == "head").cannot["tile"]
    with pytest.raises(memscale.MemScaleError, match="loss_fn must be callable"):
        wrap(model, memory_budget=1 << 40, example_inputs=(x,), loss_fn="ce")
