"""Shared helpers of the trainer-callback tests (Hugging Face Trainer, PyTorch Lightning):
the model and data, the budget, the step meter, the reference plan and the comparisons.

A run trains a tiny Llama built from a config (memscale.testing.hf_models) for three
steps; the loss is computed inside the model from ``labels``, the Trainer convention.
"""
from __future__ import annotations

import contextlib
import json
from typing import Any, Callable

import torch

import memscale
from memscale.profiler.storage import storage_bytes
from memscale.testing import hf_models

STEPS, BATCH, SEQ, SEED = 3, 4, 64, 0
#: The budget: this share of the run's measured peak without MemScale (the plan must act).
BUDGET_SHARE = 0.7


def llama() -> torch.nn.Module:
    return hf_models.llama(batch=BATCH, seq=SEQ, seed=SEED).model


def samples() -> list[dict[str, torch.Tensor]]:
    """STEPS batches of BATCH sequences, one dict per sample (what a Dataset returns)."""
    gen = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, hf_models.VOCAB, (STEPS * BATCH, SEQ), generator=gen)
    return [{"input_ids": row, "labels": row.clone()} for row in ids]


def first_batch() -> dict[str, torch.Tensor]:
    rows = samples()[:BATCH]
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


class StepMeter:
    """Measured peak of each training step: the bytes resident when the run started (the
    model's parameters and buffers) plus the counting allocator's peak inside the step
    (optimizer state, gradients, the batch and everything the step allocates), and the
    model's loss of each step (a forward hook on the model, active only inside steps)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.peaks, self.losses = model, [], []
        self._stack = contextlib.ExitStack()
        self._in_step = False
        self._resident = 0
        self._tracker: Any = None
        self._hook = model.register_forward_hook(self._record_loss)

    def _record_loss(self, module: Any, args: Any, output: Any) -> None:
        if self._in_step and torch.is_grad_enabled():
            self.losses.append(float(output.loss.detach()))

    def start(self) -> None:
        self._resident = storage_bytes([*self.model.parameters(), *self.model.buffers()])
        self._tracker = self._stack.enter_context(memscale.track_memory("cpu"))

    def step_begin(self) -> None:
        self._tracker.reset_peak()
        self._in_step = True

    def step_end(self) -> None:
        self._in_step = False
        self.peaks.append(self._resident + self._tracker.peak_bytes)

    def stop(self) -> None:
        self._stack.close()
        self._hook.remove()


def budget_for(baseline_peak: int, make_optimizer: Callable[[Any], torch.optim.Optimizer],
               make_model: Callable[[], torch.nn.Module] = llama) -> int:
    """BUDGET_SHARE of the measured peak without MemScale, raised to the smallest budget the
    engine plans for when that share is below the floor (weights stay resident in training)."""
    budget = int(baseline_peak * BUDGET_SHARE)
    try:
        reference_plan(budget, make_optimizer, make_model)
    except memscale.InfeasibleBudgetError as refusal:
        budget = refusal.min_budget_bytes
    return budget


def reference_plan(budget: int, make_optimizer: Callable[[Any], torch.optim.Optimizer],
                   make_model: Callable[[], torch.nn.Module] = llama) -> dict[str, Any]:
    """The plan memscale.wrap makes for the same model (``make_model()``, as the trainer
    hands it over), batch, optimizer (``make_optimizer(params)``, built as the trainer
    builds it) and Config."""
    model = make_model()
    memscale.wrap(model, memscale.Config(memory_budget=budget), example_inputs=first_batch(),
                  optimizer=make_optimizer(model.parameters()))
    try:
        return comparable(memscale.plan_of(model))
    finally:
        memscale.unwrap(model)


def comparable(plan: Any) -> dict[str, Any]:
    """A plan's JSON without the trace line naming the host RAM available at detection
    (the device of a CPU-only machine: it moves between two detections)."""
    data = json.loads(plan.to_json())
    data["trace"] = [line for line in data["trace"] if not line.startswith("CPU-only: host RAM")]
    return data


def assert_same_losses(losses: list[float], reference_losses: list[float]) -> None:
    """Every step's loss equals the run without MemScale (relative 1e-6). The weights are
    not compared element-wise: Adam turns float-rounding differences of near-zero gradients
    (a recompute or a fused head sums in another order) into updates of up to the learning
    rate; the later steps' losses are what those weights compute."""
    assert len(losses) == STEPS and len(reference_losses) == STEPS
    torch.testing.assert_close(torch.tensor(losses, dtype=torch.float64),
                               torch.tensor(reference_losses, dtype=torch.float64), rtol=1e-6, atol=0)


def assert_fitted_run(name: str, plan: Any, reference: dict[str, Any], budget: int, meter: StepMeter,
                      plain: StepMeter) -> None:
    """The callback's plan acts and is ``reference`` (wrap's), the losses are the plain
    run's, and every step's measured peak is within the budget and below the plain run's."""
    assert any(layer.techniques for layer in plan.layers), "the budget should make the plan act"
    assert comparable(plan) == reference
    assert_same_losses(meter.losses, plain.losses)
    print(f"{name}: measured peak {max(meter.peaks)} / budget {budget} = {max(meter.peaks) / budget:.3f} "
          f"(without memscale {max(plain.peaks)}: {max(plain.peaks) / budget:.3f})")
    assert max(meter.peaks) <= budget
    assert max(meter.peaks) < max(plain.peaks)


def assert_unwrapped(model: torch.nn.Module, fresh_forward_names: set[str]) -> None:
    """No plan, and no module keeps a patched forward (``wrap`` patches instance forwards)."""
    assert memscale.plan_of(model) is None
    assert {name for name, m in model.named_modules() if "forward" in vars(m)} == fresh_forward_names
