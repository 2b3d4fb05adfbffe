"""The plan_quality benchmark: its ratio functions on synthetic inputs, the records of a run
on a tiny GPT (structure, and ratios consistent with the rows), the sac_ilp adapter, and
its goals registered and checked."""
import math

import pytest
import torch
import torch.nn.functional as F

from memscale.bench import goals as bench_goals
from memscale.bench.registry import SCENARIOS
from memscale.bench.scenarios import _sac_ilp, plan_quality
from memscale.bench.scenarios._plan_quality_ratios import best_fitting, cost_ratio, search_fraction
from memscale.testing import models

TINY = dict(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq=32, vocab=64, batch=2)


def test_best_fitting_picks_the_fastest_row_under_the_peak():
    rows = {"a": {"measured_peak_bytes": 100, "step_time_s": 2.0},
            "b": {"measured_peak_bytes": 90, "step_time_s": 3.0},
            "c": {"measured_peak_bytes": 200, "step_time_s": 1.0},  # fastest, does not fit
            "d": {"measured_peak_bytes": None, "step_time_s": None}}  # did not run
    assert best_fitting(rows, 100) == "a"
    assert best_fitting(rows, 95) == "b"
    assert best_fitting(rows, 200) == "c"
    assert best_fitting(rows, 50) is None


def test_cost_ratio():
    assert cost_ratio(3.0, 2.0) == 1.5
    assert cost_ratio(0.0, 0.0) == 1.0
    assert math.isinf(cost_ratio(1e-6, 0.0))
    with pytest.raises(ValueError, match=">= 0"):
        cost_ratio(-1.0, 1.0)


def test_search_fraction_bisects_to_the_largest_fitting_fraction():
    calls = []

    def peak(f):  # a peak rising with the fraction of activations kept
        calls.append(f)
        return int(1000 + 1000 * f)

    found, tried = search_fraction(peak, 1400, iterations=6)
    assert found is not None and found <= 0.4 and 0.4 - found <= 1 / 2**6
    assert all(tried[f] == peak(f) for f in tried)
    n = len(calls)
    again, _ = search_fraction(peak, 1400, iterations=6, tried=tried)  # cached: no new compile
    assert again == found and len(calls) == n
    assert search_fraction(peak, 5000, iterations=6)[0] == 1.0
    found, tried = search_fraction(peak, 500, iterations=6)
    assert found is None and sorted(tried) == [0.0, 1.0]
    found, tried = search_fraction(peak, 500, iterations=0)  # quick: only the least-memory fraction
    assert found is None and sorted(tried) == [0.0]


def test_records_of_a_tiny_run(monkeypatch):
    # the eager partitioner compiles in a second; the full run uses inductor
    monkeypatch.setattr(plan_quality, "COMPILE_BACKEND", "aot_eager_decomp_partition")
    records = plan_quality._run(TINY, rounds=1, warmup=0, bisections=1)
    assert [r["label"] for r in records] == ["90%", "70%", "50%", "min"]
    for r in records:
        assert r["scenario"] == "plan_quality"
        assert set(r["rows"]) == {"memscale_auto", "memscale_greedy", "memscale_optimal", "torch_compile",
                                  "sac_ilp", "checkpoint_every_block", "unoptimized"}
        for name in ("memscale_auto", "memscale_greedy", "memscale_optimal"):
            row = r["rows"][name]
            if not row["refused"]:
                assert row["measured_peak_bytes"] > 0 and row["step_time_s"] > 0
                assert row["predicted_peak_bytes"] > 0 and row["planning_time_s"] >= 0
        sac = r["rows"]["sac_ilp"]
        assert sac["ran"] or sac["reason"]
        compiled = r["rows"]["torch_compile"]
        assert "0.0" in compiled["fractions_tried"]
        if compiled["fits"]:
            assert compiled["fractions_tried"][str(compiled["activation_memory_budget"])] <= r["budget_bytes"]
        ours = r["rows"]["memscale_auto"]
        if r.get("best_pytorch") is not None:
            assert r["rows"][r["best_pytorch"]]["measured_peak_bytes"] <= ours["measured_peak_bytes"]
            assert "time_vs_pytorch" in r["ratios"]
        if not r["rows"]["memscale_optimal"]["refused"] and not ours["refused"]:
            want = cost_ratio(ours["modelled_cost_s"], r["rows"]["memscale_optimal"]["modelled_cost_s"])
            assert r["ratios"]["auto_cost_vs_optimal"] == want
    assert records[-1]["budget_bytes"] < records[0]["unoptimized_peak_bytes"]
    assert not records[-1]["rows"]["memscale_auto"]["refused"]  # the min budget is planned


def test_sac_ilp_adapter_on_a_tiny_model():
    pytest.importorskip("pulp")

    def build():
        model = models.build("gpt", seed=0, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq=16, vocab=64)
        ids, labels = models.example_inputs("gpt", model, batch=2, seq=16)
        return model, (ids,), lambda out: F.cross_entropy(out.flatten(0, 1), labels.flatten())

    if torch.cuda.is_available():
        got = _sac_ilp.solve(build, 2**30, torch.device("cuda"))
        assert got["predicted_peak_bytes"] > 0 and got["ilp_time_s"] >= 0
    else:  # PyTorch's runtime estimators need CUDA: the reason, not a crash
        with pytest.raises(_sac_ilp.SacIlpUnavailable, match="CUDA"):
            _sac_ilp.solve(build, 2**30, torch.device("cpu"))


def _record(**ratios):
    return {"scenario": "plan_quality", "model": "gpt", "label": "70%", "quick": False, "ratios": ratios}


def test_goals_registered_and_checked():
    assert "plan_quality" in SCENARIOS
    goals = [g for g in bench_goals.load_goals(bench_goals.default_goals_path()) if g["scenario"] == "plan_quality"]
    assert {g["id"] for g in goals} == {"plan-quality-peak-within-budget", "plan-quality-time-vs-pytorch",
                                        "plan-quality-default-cost-within-5pct"}
    good = _record(peak_over_budget=0.9, time_vs_pytorch=0.95, auto_cost_vs_optimal=1.0)
    assert all(r.passed for r in bench_goals.check([good], goals))
    slow = _record(peak_over_budget=0.9, time_vs_pytorch=1.2, auto_cost_vs_optimal=1.0)
    costly = _record(peak_over_budget=0.9, time_vs_pytorch=0.9, auto_cost_vs_optimal=1.2)
    assert [r.goal_id for r in bench_goals.check([slow], goals) if not r.passed] == ["plan-quality-time-vs-pytorch"]
    assert [r.goal_id for r in bench_goals.check([costly], goals) if not r.passed] == \
        ["plan-quality-default-cost-within-5pct"]
