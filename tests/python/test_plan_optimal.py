"""Config(solver="optimal"): the exact solver plans a profiled zoo model at no more modelled
cost than the greedy, within the budget, and says what it minimised; the default "auto"
plans what "optimal" plans on it and says so; inference plans keep the greedy (said in the
trace); an unknown solver is a ConfigError naming the allowed ones."""
from __future__ import annotations

from pathlib import Path

import pytest

import memscale
from memscale.testing import models

ROOT = Path(__file__).resolve().parents[2]
HW = memscale.Hardware.from_json(str(ROOT / "tests" / "data" / "hardware" / "gpu_24gib.json"))


@pytest.fixture(scope="module")
def gpt_graph():
    model = models.build("gpt", n_layers=4)  # batch x seq large enough that saved activations matter
    return memscale.profile(model, models.example_inputs("gpt", model, batch=8, seq=128), training=True)


def _min_budget(graph, **config) -> int:
    with pytest.raises(memscale.InfeasibleBudgetError) as refused:
        memscale.plan(graph, hardware=HW, memory_budget=1, force_optimize=True, **config)
    return refused.value.min_budget_bytes


def test_optimal_costs_no_more_than_the_greedy_and_fits(gpt_graph):
    greedy_min = _min_budget(gpt_graph, solver="greedy")
    optimal_min = _min_budget(gpt_graph, solver="optimal")
    assert optimal_min <= greedy_min
    unoptimized = memscale.plan(gpt_graph, hardware=HW, memory_budget=1 << 40, force_optimize=True).unoptimized_peak_bytes
    assert greedy_min < unoptimized  # something must help, or the comparison says nothing
    changed = 0
    for share in (0.0, 0.3, 0.7):
        budget = greedy_min + int(share * (unoptimized - greedy_min))
        cfg = dict(memory_budget=budget, force_optimize=True)
        greedy = memscale.plan(gpt_graph, memscale.Config(**cfg, solver="greedy"), hardware=HW)
        optimal = memscale.plan(gpt_graph, memscale.Config(**cfg, solver="optimal"), hardware=HW)
        assert optimal.predicted_peak_bytes <= budget
        default = memscale.plan(gpt_graph, memscale.Config(**cfg), hardware=HW)
        assert [l.techniques for l in default.layers] == [l.techniques for l in optimal.layers]
        assert any(line.startswith("solver auto: the exact solver plans this step") for line in default.trace)
        assert memscale.plan_cost(gpt_graph, optimal, HW) <= memscale.plan_cost(gpt_graph, greedy, HW) * (1 + 1e-9)
        claim = [line for line in optimal.trace if line.startswith("solver optimal: minimised")]
        assert claim and "subject to predicted peak <=" in claim[0], optimal.trace
        for layer in optimal.layers:
            if layer.techniques:
                changed += 1
                assert layer.rules[0] == "solver.optimal", (layer.name, layer.rules)
                assert len(layer.rules) > 1  # and each technique's own rule id
    assert changed > 0
    # Below the greedy's minimum the optimum may still fit; at its own minimum it does.
    at_min = memscale.plan(gpt_graph, hardware=HW, memory_budget=optimal_min, force_optimize=True, solver="optimal")
    assert at_min.predicted_peak_bytes <= optimal_min


def test_inference_keeps_the_greedy_and_says_so():
    model = models.build("gpt", n_layers=2).eval()
    graph = memscale.profile(model, models.example_inputs("gpt", model, batch=1, seq=16, labels=False), training=False)
    p = memscale.plan(graph, hardware=HW, memory_budget="20GiB", force_optimize=True, solver="optimal")
    assert any('solver "optimal": applies to training plans' in line for line in p.trace), p.trace


def test_unknown_solver_is_a_config_error():
    with pytest.raises(memscale.ConfigError, match=r'solver: got "exact", allowed: "auto", "greedy", "optimal"'):
        memscale.Config(solver="exact")
    assert memscale.Config().solver == "auto"
    assert memscale.Config.from_json(memscale.Config(solver="optimal").to_json()).solver == "optimal"
