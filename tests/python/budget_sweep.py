"""The budget sweep of issue 13, acceptance 1, for any model a test can build twice.

From 100% of the unwrapped model's measured step peak down to the minimum ``wrap`` states,
in 5% steps and at the minimum itself, ``wrap`` either refuses with
``InfeasibleBudgetError`` (whose minimum then fits) or applies a plan whose measured step
peak (memscale.testing.measure.measured_step_peak: everything resident during the third
step) is within ``TOLERANCE`` x the budget, with the unwrapped model's losses and gradients
in the warm-up steps (the same seed before each step: shared dropout masks).

A refusal may also come from the first-step check (runtime/training/verify.py): the first
step measured over budget, the re-plan from measured figures found no plan, and the second
step raises ``InfeasibleBudgetError`` with the measured minimum. That minimum must fit too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

import memscale
from memscale.api import unwrap, wrap
from memscale.testing.measure import measured_step_peak

TOLERANCE = 1.05
STEP = 0.05


@dataclass
class Case:
    """A fresh model, its inputs (tuple of args or dict of kwargs) and the loop's loss."""

    model: torch.nn.Module
    inputs: Any
    loss_fn: Callable[[Any], torch.Tensor] | None = None  # None: the model's own loss
    autocast: torch.dtype | None = None


@dataclass
class Sweep:
    """What a sweep measured: (budget share, outcome, peak / budget) per budget tried."""

    unoptimized: int
    minimum: int
    results: list[tuple[float, str, float]] = field(default_factory=list)

    def __str__(self) -> str:
        rows = ", ".join(f"{share:.2f}:{outcome}:{ratio:.3f}" for share, outcome, ratio in self.results)
        return f"unoptimized {self.unoptimized} B, stated minimum {self.minimum / self.unoptimized:.3f}; {rows}"


def _wrap(case: Case, budget: int) -> None:
    loss_fn = None if case.loss_fn is None else (lambda output, batch: case.loss_fn(output))
    wrap(case.model, memscale.Config(memory_budget=budget), example_inputs=case.inputs, loss_fn=loss_fn,
         autocast=case.autocast)


def _measure(case: Case, check: Callable[[int, torch.Tensor, Any], None]) -> int:
    return measured_step_peak(case.model, case.inputs, loss_fn=case.loss_fn, autocast=case.autocast,
                              seed=0, check=check)


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def sweep(build: Callable[[], Case], compare: Callable[[Any, Any], None] | None = None) -> Sweep:
    """Runs the sweep on fresh copies from ``build``; asserts each budget's outcome.

    ``compare(reference, got)`` checks one warm-up step's ``(loss, grads)`` against the
    unwrapped run's (default: fp32, rtol 1e-5)."""
    compare = compare or _compare_fp32
    reference: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
    unoptimized = _measure(build(), lambda i, loss, model: reference.append((loss.clone(), _grads(model))))
    try:
        _wrap(build(), 1)
        raise AssertionError("a 1-byte budget was accepted")
    except memscale.InfeasibleBudgetError as refusal:
        minimum = refusal.min_budget_bytes
    result = Sweep(unoptimized, minimum)

    def wrapped_peak(budget: int) -> int:
        case = build()
        _wrap(case, budget)
        try:
            return _measure(case, lambda i, loss, model: compare(reference[i], (loss, _grads(model))))
        finally:
            unwrap(case.model)

    shares = [1.0 - k * STEP for k in range(int(1 / STEP)) if (1.0 - k * STEP) * unoptimized > minimum]
    for budget in [int(s * unoptimized) for s in shares] + [minimum]:
        share = budget / unoptimized
        try:
            peak = wrapped_peak(budget)
        except memscale.InfeasibleBudgetError as refusal:
            stated = refusal.min_budget_bytes
            assert stated > budget, (budget, stated, str(result))
            peak = wrapped_peak(stated)
            result.results.append((share, f"refused->{stated / unoptimized:.3f}", peak / stated))
            assert peak <= TOLERANCE * stated, (stated, peak, str(result))
            continue
        assert budget >= minimum, (budget, minimum)
        result.results.append((share, "fits", peak / budget))
        assert peak <= TOLERANCE * budget, (budget, peak, str(result))
    return result


def _compare_fp32(reference: tuple[torch.Tensor, dict], got: tuple[torch.Tensor, dict]) -> None:
    (ref_loss, ref_grads), (loss, grads) = reference, got
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
