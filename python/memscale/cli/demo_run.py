"""The built-in demo: a GPT-style model trained with ``memscale.wrap`` inside half of its
measured unoptimized peak memory (the same flow as ``examples/train_gpt.py``)."""
from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger("memscale")

DEMO_SIZES = dict(d_model=256, n_layers=6, n_heads=8, d_ff=1024, max_seq=256, vocab=8192)
DEMO_BATCH = 8


@dataclass
class DemoResult:
    unoptimized_peak_bytes: int
    budget_bytes: int
    measured_peak_bytes: int
    predicted_peak_bytes: int
    plan_summary: str
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _train(model: torch.nn.Module, inputs: tuple[torch.Tensor, torch.Tensor], steps: int,
           on_step: Any = None) -> list[float]:
    ids, labels = inputs
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(steps):
        loss = model(ids, labels=labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
        if on_step:
            on_step(step, losses[-1])
    return losses


def run_demo(budget_fraction: float = 0.5, steps: int = 12, on_step: Any = None) -> DemoResult:
    """Measures the unoptimized peak of a training step (counting allocator), wraps a fresh
    copy of the model with a budget of ``budget_fraction`` of it, trains ``steps`` steps
    and measures the wrapped peak the same way."""
    import memscale
    from memscale.testing import models

    if not 0.0 < budget_fraction <= 1.0:
        raise memscale.ConfigError(f"budget_fraction: got {budget_fraction}, expected a fraction in (0, 1]")
    started = time.perf_counter()

    def build() -> tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]]:
        model = models.build("gpt", seed=0, **DEMO_SIZES)
        return model, models.example_inputs("gpt", model, batch=DEMO_BATCH, seq=DEMO_SIZES["max_seq"])

    gc.collect()
    with memscale.track_memory("cpu") as unoptimized:
        model, inputs = build()
        _train(model, inputs, 2)
        del model
    budget = int(unoptimized.peak_bytes * budget_fraction)
    log.info("unoptimized training step: measured peak %s; budget %.0f%% of it = %s",
             memscale.format_bytes(unoptimized.peak_bytes), budget_fraction * 100, memscale.format_bytes(budget))

    gc.collect()
    with memscale.track_memory("cpu") as wrapped:
        model, inputs = build()
        memscale.wrap(model, memscale.Config(memory_budget=budget), example_inputs=inputs, training=True,
                      optimizer="adamw")
        plan = memscale.plan_of(model)
        losses = _train(model, inputs, steps, on_step)
    return DemoResult(unoptimized_peak_bytes=int(unoptimized.peak_bytes), budget_bytes=budget,
                      measured_peak_bytes=int(wrapped.peak_bytes), predicted_peak_bytes=int(plan.predicted_peak_bytes),
                      plan_summary=plan.summary(), losses=losses, seconds=time.perf_counter() - started)
