"""The engine's predicted peak against the counting allocator's measured peak, on CPU:
profile a reference model, plan, apply the plan with the executor, run training steps.

The memory model is deliberately conservative (docs/memory-model.md), so the prediction
must bound the measurement, and stay close to it. The bound allows 1%: the executor's own
bookkeeping (recompute RNG state, scalars) is not in the profiled figures (kilobytes here)."""
from __future__ import annotations

import pytest
import torch

import memscale
from memscale.testing import models
from memscale.runtime.training import apply_plan
from memscale.testing.measure import measured_step_peak

HOST = memscale.Hardware.from_json('{"devices": [], "host_total_bytes": 68719476736, "offload_dir_free_bytes": 1000000000}')


@pytest.mark.parametrize("name, overrides, sizes", [
    ("gpt", {"n_layers": 4}, {"batch": 4, "seq": 128}),
    ("vit", {}, {"batch": 8}),
])
def test_predicted_peak_bounds_the_measured_peak(name, overrides, sizes):
    torch.manual_seed(0)
    model = models.build(name, **overrides)
    inputs = models.example_inputs(name, model, **sizes)
    graph = memscale.profile(model, inputs, training=True, optimizer="adamw")

    unoptimized = memscale.plan(graph, hardware=HOST, memory_budget=1 << 40, force_optimize=True)
    measured = measured_step_peak(model, inputs)
    assert measured <= 1.01 * unoptimized.unoptimized_peak_bytes
    assert measured >= 0.9 * unoptimized.unoptimized_peak_bytes

    budget = int(0.75 * unoptimized.unoptimized_peak_bytes)
    plan = memscale.plan(graph, hardware=HOST, memory_budget=budget)
    assert any(layer.techniques for layer in plan.layers)
    torch.manual_seed(0)
    planned_model = models.build(name, **overrides)
    handle = apply_plan(planned_model, plan)
    try:
        measured_planned = measured_step_peak(planned_model, inputs)
    finally:
        handle.remove()
    assert plan.predicted_peak_bytes <= budget
    assert measured_planned <= 1.01 * plan.predicted_peak_bytes
    assert measured_planned >= 0.85 * plan.predicted_peak_bytes
