"""The optimizer the loop steps with sizes the step's temporaries (profiler/optimizer.py).

On a CPU, a foreach AdamW holds a full extra copy of the parameters during its step, the
per-tensor one (torch's default there) three copies of the largest tensor: a plan made for
one and run with the other misses by the difference. ``wrap(optimizer=<the optimizer>)``
reads how it steps; a name assumes torch's default for the device.
"""
from __future__ import annotations

import pytest
import torch

import memscale
from memscale.api import unwrap, wrap
from memscale.errors import ConfigError
from memscale.profiler.profile import profile_dict
from memscale.profiler.optimizer import optimizer_spec
from memscale.testing import models
from memscale.testing.measure import measured_step_peak


def small_gpt():
    model = models.build("gpt", n_layers=3, d_model=64, d_ff=256, vocab=512, max_seq=64, dropout=0.1)
    return model, models.example_inputs("gpt", model, batch=4, labels=True)


@pytest.mark.parametrize("make, spec", [
    (lambda p: torch.optim.AdamW(p), ("adamw", "default")),
    (lambda p: torch.optim.AdamW(p, foreach=True), ("adamw", "foreach")),
    (lambda p: torch.optim.Adam(p, foreach=False), ("adam", "per_tensor")),
    (lambda p: torch.optim.AdamW(p, fused=True), ("adamw", "fused")),
    (lambda p: torch.optim.SGD(p, lr=0.1), ("sgd", "default")),
    (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, foreach=True), ("sgd_momentum", "foreach")),
])
def test_an_optimizer_says_its_kind_and_how_it_steps(make, spec) -> None:
    assert optimizer_spec(make([torch.nn.Parameter(torch.zeros(3))])) == spec


def test_an_unmodelled_optimizer_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match="optimizer: Adagrad is not modelled"):
        optimizer_spec(torch.optim.Adagrad([torch.nn.Parameter(torch.zeros(3))]))
    with pytest.raises(ConfigError, match="optimizer: got int"):
        optimizer_spec(3)


def test_the_graph_records_the_optimizers_implementation() -> None:
    model, inputs = small_gpt()
    assert profile_dict(model, inputs)["optimizer_impl"] == "default"
    opt = torch.optim.AdamW(model.parameters(), foreach=True)
    assert profile_dict(model, inputs, optimizer=opt)["optimizer_impl"] == "foreach"
    assert profile_dict(model, inputs, training=False, optimizer=opt)["optimizer_impl"] == "default"


@pytest.mark.parametrize("foreach", [None, True])
def test_the_stated_minimum_fits_the_loops_optimizer(foreach: bool | None) -> None:
    """The same small GPT (its weights dominate the minimum), stepped by AdamW with torch's
    default (per-tensor on CPU) or with foreach: wrap told the loop's optimizer states a
    minimum at which the measured step fits."""
    model, inputs = small_gpt()
    opt = torch.optim.AdamW(model.parameters(), foreach=foreach)
    with pytest.raises(memscale.InfeasibleBudgetError) as refusal:
        wrap(model, memscale.Config(memory_budget=1), example_inputs=inputs, optimizer=opt)
    minimum = refusal.value.min_budget_bytes
    wrap(model, memscale.Config(memory_budget=minimum), example_inputs=inputs, optimizer=opt)
    try:
        peak = measured_step_peak(model, inputs, foreach=foreach, seed=0)
    finally:
        unwrap(model)
    assert peak <= 1.05 * minimum, (peak, minimum, peak / minimum)
    if foreach:
        # the foreach step's extra copy of the parameters is in the minimum
        default_model, _ = small_gpt()
        with pytest.raises(memscale.InfeasibleBudgetError) as default_refusal:
            wrap(default_model, memscale.Config(memory_budget=1), example_inputs=inputs)
        assert minimum > default_refusal.value.min_budget_bytes
