"""Issue 13, point 3: fp16 autocast with ``torch.amp.GradScaler``, the loss outside the model.

``wrap(..., autocast=torch.float16, loss_fn=...)`` profiles the step in the dtypes autocast
gives, and the scaled step (scale -> backward -> step -> update) of the wrapped model
matches the unwrapped one: same losses, same scale, same parameters after the steps, and a
measured peak inside the budget. Runs on the CPU here and on CUDA where there is one.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import memscale
from memscale.testing import models

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
STEPS = 3


def scaled_run(device: str, budget: int | None) -> tuple[int, list[float], float, dict[str, torch.Tensor]]:
    """Measured peak, losses, final scale and final parameters of STEPS GradScaler steps."""
    torch.manual_seed(0)
    model = models.build("gpt", n_layers=3, d_model=64, d_ff=256, vocab=512, max_seq=64, dropout=0.0).to(device)
    ids, labels = (t.to(device) for t in models.example_inputs("gpt", model, batch=16, seq=64, labels=True))

    def loss_fn(logits: torch.Tensor, batch: object = None) -> torch.Tensor:
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())

    if budget is not None:
        memscale.wrap(model, memscale.Config(memory_budget=budget), example_inputs=(ids,), loss_fn=loss_fn,
                      autocast=torch.float16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device)
    losses = []
    with memscale.track_memory(device) as tracker:
        for _ in range(STEPS):
            with torch.autocast(device, dtype=torch.float16):
                loss = loss_fn(model(ids))
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    if budget is not None:
        memscale.unwrap(model)
    return tracker.peak_bytes, losses, scaler.get_scale(), params


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_grad_scaler_step_matches_unwrapped_inside_the_budget(device: str) -> None:
    peak, losses, scale, params = scaled_run(device, None)
    budget = int(0.7 * peak)
    try:
        wrapped_peak, wrapped_losses, wrapped_scale, wrapped_params = scaled_run(device, budget)
    except memscale.InfeasibleBudgetError as refusal:
        budget = refusal.min_budget_bytes
        wrapped_peak, wrapped_losses, wrapped_scale, wrapped_params = scaled_run(device, budget)
    assert wrapped_peak <= 1.05 * budget, (wrapped_peak, budget, peak)
    assert wrapped_peak < peak, "the plan at 70% saved nothing"
    assert wrapped_losses == pytest.approx(losses, rel=1e-5)
    assert wrapped_scale == scale
    for name, p in params.items():
        torch.testing.assert_close(wrapped_params[name], p, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
