"""Issue 16, the engine decides: ``wrap(model, cfg, optimizer=opt, offload_optimizer=True)``
below the static floor (weights + gradients + optimizer state + workspace) is planned with
the optimizer state, then the gradients, on the disk tier (rule ``optimizer_offload.*``), and
the loop steps ``memscale.optimizer_for(model)``: measured peak within 1.05 x the budget,
loss and parameters after 3 steps equal to the unwrapped run.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import memscale
from memscale.api import optimizer_for, plan_of, unwrap, wrap
from memscale.errors import ConfigError
from memscale.runtime.training.offload_optimizer import OffloadedOptimizer
from memscale.testing import models

STEPS = 3


def build() -> torch.nn.Module:
    torch.manual_seed(0)
    # Weights and optimizer state dominate the step (short sequences, a small batch).
    return models.build("gpt", n_layers=3, d_model=128, d_ff=512, vocab=2048, max_seq=32)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 2048, (1, 16), generator=g), torch.randint(0, 2048, (1, 16), generator=g)


def run(budget: int | None, tmp_path) -> tuple[int, list[float], dict[str, torch.Tensor], object]:
    """The plain loop with the loss outside the model, wrapped at ``budget`` (None: unwrapped);
    the measured peak counts everything resident in the steps."""
    losses = []
    x, y = batch()
    with memscale.track_memory("cpu") as tracker:
        model = build()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        plan = None
        if budget is not None:
            wrap(model, memscale.Config(memory_budget=budget, offload={"disk_dir": str(tmp_path)}),
                 example_inputs=(x,), optimizer=opt, offload_optimizer=True,
                 loss_fn=lambda out, _batch: F.cross_entropy(out.flatten(0, 1), y.flatten()))
            plan = plan_of(model)
            opt = optimizer_for(model)
        tracker.reset_peak()
        try:
            for _ in range(STEPS):
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
                loss.backward()
                losses.append(loss.item())
                del loss
                opt.step()
            peak = tracker.peak_bytes
        finally:
            if budget is not None:
                unwrap(model)
    return peak, losses, {n: p.detach().clone() for n, p in model.named_parameters()}, plan


def minimum(tmp_path, offload: bool) -> int:
    x, _ = batch()
    model = build()
    with pytest.raises(memscale.InfeasibleBudgetError) as refusal:
        wrap(model, memscale.Config(memory_budget=1, offload={"disk_dir": str(tmp_path)}), example_inputs=(x,),
             optimizer=torch.optim.AdamW(model.parameters()), offload_optimizer=offload,
             loss_fn=lambda out, _batch: out.sum())
    return refusal.value.min_budget_bytes


def test_below_the_static_floor_the_engine_offloads_and_the_loop_is_equal(tmp_path) -> None:
    _, ref_losses, ref_params, _ = run(None, tmp_path)
    floor, reach = minimum(tmp_path, False), minimum(tmp_path, True)
    assert reach < 0.9 * floor, (reach, floor)
    results = []
    for budget, kinds in ((floor * 95 // 100, "state"), (reach, "state+gradients")):
        peak, losses, params, plan = run(budget, tmp_path)
        assert plan.optimizer_offload.kinds == kinds, (budget, plan.trace[-1])
        assert plan.optimizer_offload.rule.startswith("optimizer_offload.")
        results.append((kinds, budget, peak, round(peak / budget, 3), round(budget / floor, 3)))
        assert peak <= 1.05 * budget, results
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-6, atol=0)
        for name, p in params.items():
            torch.testing.assert_close(p, ref_params[name], rtol=1e-6, atol=1e-8, msg=lambda m: f"{name}: {m}")
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.safetensors"))
    print(f"\nstatic floor {floor}, offload reaches {reach} ({reach / floor:.2f}); "
          f"(kinds, budget, peak, peak/budget, budget/floor): {results}")


def test_without_the_opt_in_nothing_changes(tmp_path) -> None:
    x, _ = batch()
    model = build()
    opt = torch.optim.AdamW(model.parameters())
    wrap(model, memscale.Config(memory_budget=1 << 40), example_inputs=(x,), optimizer=opt)
    try:
        assert optimizer_for(model) is opt
        assert plan_of(model).optimizer_offload.kinds == ""
    finally:
        unwrap(model)
    with pytest.raises(ConfigError, match="offload_optimizer=True needs optimizer="):
        wrap(build(), memscale.Config(memory_budget=1 << 40), example_inputs=(x,), optimizer="adamw",
             offload_optimizer=True)
    with pytest.raises(memscale.MemScaleError, match="not wrapped for training"):
        optimizer_for(build())
    assert not isinstance(opt, OffloadedOptimizer)
