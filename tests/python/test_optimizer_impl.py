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


@pytest.mark.parametrize("shapes", [[(256, 256)], [(256, 256), (256, 256)], [(256, 256), (8,), (64, 64), (256, 256)],
                                    [(64,), (256, 256), (16, 16)]], ids=["one", "two_equal", "mixed", "small_first"])
def test_the_per_tensor_adamw_workspace_is_what_its_step_allocates(shapes) -> None:
    """The engine's workspace of torch's per-tensor AdamW step (previous + 2 x current over
    the tensors in step order) against the step measured with the counting allocator."""
    import json

    from memscale._C import ModelGraph
    from memscale.config import Config
    from memscale.hardware import detect_hardware
    from memscale.planning import plan as make_plan

    params = [torch.nn.Parameter(torch.randn(*s)) for s in shapes]
    opt = torch.optim.AdamW(params, lr=1e-3, foreach=False)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()  # the state exists before the measured step
    with memscale.track_memory("cpu") as t:
        opt.step()
    sizes = [p.numel() * p.element_size() for p in params]

    def peak(order: list[int]) -> int:
        layer = {"index": 0, "name": "l", "kind": "other", "param_bytes": sum(sizes), "grad_bytes": sum(sizes),
                 "optimizer_bytes": 2 * sum(sizes), "buffer_bytes": 0, "activation_bytes": 0, "transient_bytes": 0,
                 "input_bytes": 0, "output_bytes": 0, "kv_cache_bytes": 0, "flops": 0}
        graph = {"layers": [layer], "optimizer": "adamw", "optimizer_impl": "per_tensor",
                 "largest_param_bytes": max(sizes), "trainable_param_bytes": order}
        plan = make_plan(ModelGraph.from_json(json.dumps(graph)), Config(mode="off"), hardware=detect_hardware())
        return int(plan.unoptimized_peak_bytes)
    workspace = peak(sizes) - peak([0])
    assert workspace == pytest.approx(t.peak_bytes, abs=64), (workspace, t.peak_bytes)
