"""wrap / plan_of / unwrap mechanics and verify-and-replan.

The planner is replaced by a small deterministic one that returns real ``memscale.Plan``
objects (through ``Plan.from_json``): it checkpoints every block and records the budget
it was given, so the tests exercise wrap's own logic — profiling, applying, logging, the
first-step measurement and the re-plan — whatever the engine decides.
"""
from __future__ import annotations

import json
import logging

import pytest
import torch

import importlib

import memscale
from executor_testlib import assert_same_step, build, module_state, twin
from memscale.api import plan_of, unwrap, wrap
from memscale.runtime.hooks import handle_of

# The engine's one entry point; the planner fixture replaces it.
planning_mod = importlib.import_module("memscale.planning")


def _plan_doc(graph, cfg, techniques_for_blocks) -> dict:
    g = json.loads(graph.to_json())
    budget = int(cfg.memory_budget) if isinstance(cfg.memory_budget, int) else 1 << 40
    layers = [{"index": l["index"], "name": l["name"], "kind": l["kind"],
               "techniques": sorted(techniques_for_blocks) if l["kind"] == "block" else [],
               "tile_chunks": 1, "weight_tier": "device", "activation_tier": "device",
               "pinned": False, "bytes_before": 0, "bytes_after": 0, "rules": ["test"],
               "reasons": ["test planner"]} for l in g["layers"]]
    return {"mode": "auto", "training": True, "budget_bytes": budget, "device_count": 1,
            "unoptimized_peak_bytes": budget, "predicted_peak_bytes": budget // 2,
            "pressure": 1.0, "skipped": not techniques_for_blocks,
            "skip_reason": "" if techniques_for_blocks else "fits",
            "layers": layers, "rejected": [], "trace": [], "reservation": {}, "tier_policy": {},
            "offload": {"policy": "none", "ram_bytes": 0, "hot_set": [], "prefetch_n_ahead": 0}}


@pytest.fixture
def planner(monkeypatch):
    calls = []

    def make(graph, cfg, hardware=None, calibration=None):
        # training keeps weights resident: the graph says so, the Config is passed unchanged
        assert all("offload_weights" in layer.cannot for layer in graph.layers)
        calls.append({"graph": json.loads(graph.to_json()), "budget": cfg.memory_budget})
        if len(calls) > 1 and planner.refuse_replan_with:
            raise memscale.InfeasibleBudgetError(f"no plan fits the budget of {cfg.memory_budget}",
                                                 planner.refuse_replan_with)
        return memscale.Plan.from_json(json.dumps(_plan_doc(graph, cfg, planner.techniques)))
    planner.techniques = ["checkpoint"]
    planner.refuse_replan_with = 0  # > 0: re-plans are refused with this minimum
    planner.calls = calls
    monkeypatch.setattr(planning_mod, "plan", make)
    return planner


def test_wrap_returns_same_object_and_unwrap_restores(planner, caplog) -> None:
    model, inputs = build("gpt")
    ref = twin(model)
    before = module_state(model)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="memscale"):
        assert wrap(model, memory_budget=1 << 40, example_inputs=inputs) is model
    assert "memscale plan for GPT" in caplog.text
    assert plan_of(model) is not None and plan_of(model).layers[3].techniques == ["checkpoint"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    assert_same_step(model, ref, inputs)
    assert_same_step(model, ref, inputs)
    unwrap(model)
    assert module_state(model) == before
    assert plan_of(model) is None
    unwrap(model)  # idempotent


def test_noop_plan_changes_nothing_and_says_so(planner, caplog) -> None:
    planner.techniques = []
    model, inputs = build("gpt")
    before = module_state(model)
    with caplog.at_level(logging.INFO, logger="memscale"):
        wrap(model, memory_budget=1 << 40, example_inputs=inputs)
    assert "no optimization needed" in caplog.text
    assert module_state(model) == before
    assert plan_of(model).skipped
    unwrap(model)


def test_bad_calls_raise_before_modifying(planner) -> None:
    model, inputs = build("gpt")
    before = module_state(model)
    with pytest.raises(memscale.MemScaleError, match="example_inputs is required"):
        wrap(model, memory_budget="1GiB")
    with pytest.raises(memscale.MemScaleError, match="either cfg or config keywords"):
        wrap(model, memscale.Config(), example_inputs=inputs, memory_budget="1GiB")
    with pytest.raises(memscale.MemScaleError, match="training='yes'"):
        wrap(model, example_inputs=inputs, training="yes")  # training=False is inference (the pager)
    with pytest.raises(memscale.ConfigError):
        wrap(model, example_inputs=inputs, memory_budget="lots")
    assert module_state(model) == before
    wrap(model, memory_budget=1 << 40, example_inputs=inputs)
    with pytest.raises(memscale.MemScaleError, match="already wrapped"):
        wrap(model, memory_budget=1 << 40, example_inputs=inputs)
    unwrap(model)


def test_offload_weights_on_is_refused_for_training() -> None:
    # The engine refuses it: no layer of a training graph can offload weights.
    model, inputs = build("gpt")
    before = module_state(model)
    with pytest.raises(memscale.ConfigError, match='offload_weights: "on", but no layer of this training graph'):
        wrap(model, example_inputs=inputs, techniques={"offload_weights": "on"})
    assert module_state(model) == before


def test_first_step_within_budget_is_verified_once(planner, caplog) -> None:
    model, inputs = build("gpt")
    wrap(model, memory_budget=1 << 40, example_inputs=inputs)
    state = handle_of(model)
    assert state.monitor is not None
    with caplog.at_level(logging.INFO, logger="memscale"):
        model(*inputs).backward()
    assert "first step of GPT measured" in caplog.text
    assert state.monitor is None  # removed after the check
    assert state.measured_peak_bytes > sum(p.numel() * 4 for p in model.parameters())
    assert len(planner.calls) == 1
    unwrap(model)


def test_over_budget_first_step_replans_before_the_next(planner, caplog) -> None:
    model, inputs = build("gpt")
    ref = twin(model)
    before = module_state(model)
    wrap(model, memory_budget=1 << 20, example_inputs=inputs)  # 1 MiB: far too small
    first_plan = plan_of(model)
    state = handle_of(model)
    with caplog.at_level(logging.INFO, logger="memscale"):
        assert_same_step(model, ref, inputs)  # measured here; over budget
        assert state.monitor is not None and state.monitor.pending_replan
        assert plan_of(model) is first_plan
        assert_same_step(model, ref, inputs)  # re-planned at the start of this call
    assert "re-planning with measured figures" in caplog.text
    assert "re-planned GPT" in caplog.text
    assert plan_of(model) is not first_plan and state.replanned
    assert len(planner.calls) == 2
    second = planner.calls[1]
    assert second["budget"] < 1 << 20  # scaled by predicted / measured
    assert any(l["measured_activation_bytes"] > 0 for l in second["graph"]["layers"])
    assert state.monitor is None
    assert_same_step(model, ref, inputs)
    unwrap(model)
    assert module_state(model) == before


def test_a_refused_replan_names_the_users_budget_and_the_measured_minimum(planner) -> None:
    model, inputs = build("gpt")
    ref = twin(model)
    budget = 1 << 20
    planner.refuse_replan_with = 3 << 20
    wrap(model, memory_budget=budget, example_inputs=inputs)
    assert_same_step(model, ref, inputs)  # measured here; over budget
    with pytest.raises(memscale.InfeasibleBudgetError) as refusal:
        model(*inputs)
    assert refusal.value.min_budget_bytes == 3 << 20
    message = str(refusal.value)
    # the planning budget the engine was given is scaled down; the user's is what it names
    assert planner.calls[1]["budget"] < budget
    assert f"memory_budget = {budget} bytes" in message and f"min_budget_bytes = {3 << 20}" in message
    unwrap(model)


# -- with the real engine ---------------------------------------------------------------

needs_engine = pytest.mark.skipif(not hasattr(memscale, "plan"),
                                  reason="needs memscale.plan (the decision engine's Python API)")


def _train_peak(model_fn, steps: int, prepare=None) -> tuple[int, list[float]]:
    with memscale.track_memory("cpu") as tracker:
        model, inputs = model_fn()
        if prepare is not None:
            prepare(model, inputs)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses = []
        for i in range(steps):
            torch.manual_seed(i)
            loss = model(*inputs)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        peak = tracker.peak_bytes
        if prepare is not None:
            unwrap(model)
    return peak, losses


@needs_engine
@pytest.mark.parametrize("fraction", [0.8, 0.6])
def test_real_engine_fits_measured_budget(fraction: float) -> None:
    def gpt():
        model = memscale.testing.models.build("gpt", n_layers=4, d_model=128, d_ff=512, max_seq=128,
                                      vocab=4096, dropout=0.1)
        return model, memscale.testing.models.example_inputs("gpt", model, batch=4, seq=128)
    unoptimized, ref_losses = _train_peak(gpt, 3)
    budget = int(unoptimized * fraction)
    try:
        peak, losses = _train_peak(gpt, 3, lambda m, i: wrap(m, memory_budget=budget,
                                                              example_inputs=i))
    except memscale.InfeasibleBudgetError as refusal:
        budget = refusal.min_budget_bytes
        peak, losses = _train_peak(gpt, 3, lambda m, i: wrap(m, memory_budget=budget,
                                                              example_inputs=i))
    assert peak <= 1.05 * budget, (peak, budget)
    for a, b in zip(losses, ref_losses):
        assert abs(a - b) <= 1e-5 * abs(b)
