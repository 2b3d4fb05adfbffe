"""memscale.plan, the `memscale plan` CLI, reservation calibration and the tier search."""
from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import memscale

DATA = Path(__file__).resolve().parents[1] / "data"
GRAPHS = sorted((DATA / "graphs").glob("*.json"))
GPU24 = DATA / "hardware" / "gpu_24gib.json"


def hw24():
    return memscale.Hardware.from_json(str(GPU24))


def graph(name: str):
    return memscale.ModelGraph.from_json(str(DATA / "graphs" / name))


def unoptimized(g) -> int:
    return memscale.plan(g, hardware=hw24(), force_optimize=True, memory_budget=1 << 50).unoptimized_peak_bytes


def test_fixtures_are_what_the_generator_writes():
    out = subprocess.run([sys.executable, str(DATA / "make_graph_fixtures.py"), "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert len(GRAPHS) >= 5


def test_plan_returns_a_plan_within_budget():
    g = graph("gpt2_small_train.json")
    budget = unoptimized(g) // 2
    p = memscale.plan(g, hardware=hw24(), memory_budget=budget)
    assert isinstance(p, memscale.Plan)
    assert p.budget_bytes == budget
    assert p.predicted_peak_bytes <= budget < p.unoptimized_peak_bytes
    assert p.pressure == pytest.approx(p.unoptimized_peak_bytes / budget, rel=1e-6)
    assert len(p.layers) == len(g.layers)
    assert any("checkpoint" in layer.techniques for layer in p.layers)
    for layer in p.layers:
        assert layer.rules and len(layer.rules) == len(layer.reasons)
    doc = json.loads(p.to_json())
    assert doc["predicted_peak_bytes"] == p.predicted_peak_bytes
    assert "predicted peak" in p.summary()
    assert memscale.Plan.from_json(p.to_json()) == p


def test_config_object_keywords_and_paths_are_equivalent():
    g = graph("vit_b16_train.json")
    budget = unoptimized(g) * 6 // 10
    a = memscale.plan(g, memscale.Config(memory_budget=budget), hardware=hw24())
    b = memscale.plan(str(DATA / "graphs" / "vit_b16_train.json"), hardware=str(GPU24), memory_budget=budget)
    c = memscale.plan(g, memscale.Config(memory_budget=1), hw24(), memory_budget=budget)  # keywords override cfg
    assert a.to_json() == b.to_json() == c.to_json()
    with pytest.raises(TypeError, match="cfg: expected a memscale.Config"):
        memscale.plan(g, {"memory_budget": budget}, hardware=hw24())


def test_missing_hardware_uses_detect_hardware(monkeypatch):
    g = graph("resnet50_train.json")
    import memscale.hardware

    monkeypatch.setattr(memscale.hardware, "detect_hardware", hw24)
    assert memscale.plan(g, memory_budget="4GiB").to_json() == memscale.plan(g, hardware=hw24(), memory_budget="4GiB").to_json()


def test_infeasible_budget_reports_the_minimum():
    g = graph("t5_base_train.json")
    with pytest.raises(memscale.InfeasibleBudgetError) as info:
        memscale.plan(g, hardware=hw24(), memory_budget=1 << 20)
    minimum = info.value.min_budget_bytes
    assert "dominated by" in str(info.value)
    assert memscale.plan(g, hardware=hw24(), memory_budget=minimum).predicted_peak_bytes == minimum
    with pytest.raises(memscale.InfeasibleBudgetError):
        memscale.plan(g, hardware=hw24(), memory_budget=int(minimum * 0.97))


def test_overrides_are_honoured_and_conflicts_rejected():
    g = graph("gpt2_small_train.json")
    p = memscale.plan(g, hardware=hw24(), memory_budget=unoptimized(g) // 2,
                      techniques={"offload_activations": "off"},
                      layer_overrides={"transformer.h.0": {"checkpoint": "off"}, "lm_head": {"tiling": "on"}})
    by_name = {layer.name: layer for layer in p.layers}
    assert "checkpoint" not in by_name["transformer.h.0"].techniques
    assert "tile" in by_name["lm_head"].techniques
    assert all("offload_activations" not in layer.techniques for layer in p.layers)
    with pytest.raises(memscale.ConfigError, match=r'layer_overrides\["transformer\.h\.\*"\].*layer_overrides\["transformer\.h\.1\*"\]'):
        memscale.plan(g, hardware=hw24(), memory_budget="8GiB",
                      layer_overrides={"transformer.h.*": {"checkpoint": "on"}, "transformer.h.1*": {"checkpoint": "off"}})


def test_planning_releases_the_gil_and_stays_deterministic_across_threads():
    g = graph("llama7b_train.json")
    cfg = memscale.Config(memory_budget="30GiB")
    with ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(lambda _: memscale.plan(g, cfg, hw24()).to_json(), range(8)))
    assert len(set(texts)) == 1


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "memscale", "plan", *args], capture_output=True, text=True)


def test_cli_json_is_byte_identical_across_processes_and_matches_the_api():
    args = ("--graph", str(DATA / "graphs" / "llama7b_infer.json"), "--budget", "16GiB", "--hardware", str(GPU24), "--json")
    first, second = _cli(*args), _cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    in_process = memscale.plan(graph("llama7b_infer.json"), hardware=hw24(), memory_budget="16GiB")
    assert first.stdout == in_process.to_json() + "\n"


def test_cli_summary_config_file_and_errors(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"memory_budget": "1GiB", "techniques": {"offload_weights": "off"}}))
    ok = _cli("--graph", str(DATA / "graphs" / "gpt2_small_train.json"), "--hardware", str(GPU24),
              "--config", str(cfg), "--budget", "10GiB")
    assert ok.returncode == 0, ok.stderr
    assert "predicted peak" in ok.stdout and "transformer.h.0" in ok.stdout
    bad = _cli("--graph", str(DATA / "graphs" / "gpt2_small_train.json"), "--hardware", str(GPU24), "--config", str(cfg))
    assert bad.returncode == 1
    assert "memscale plan: no plan fits the budget of 1.00 GiB" in bad.stderr
    assert "techniques.offload_weights" in bad.stderr
    missing = _cli("--graph", str(tmp_path / "nope.json"), "--budget", "1GiB", "--hardware", str(GPU24))
    assert missing.returncode == 1 and "nope.json" in missing.stderr
    helped = subprocess.run([sys.executable, "-m", "memscale", "--help"], capture_output=True, text=True)
    assert "plan" in helped.stdout


def test_calibration_recovers_a_known_factor_and_travels_into_the_plan():
    factor = 1.8
    samples = [(w, t, 2, round(w * t * 2 * factor)) for w in (4096, 11008) for t in (1024, 8192, 16384)]
    cal = memscale.calibrate_reservation(samples)
    assert cal.safety_factor == pytest.approx(factor, rel=1e-6)  # measured bytes are whole bytes
    assert cal.least_squares_factor == pytest.approx(factor, rel=1e-6)
    assert cal.samples == len(samples)
    dicts = [dict(widest_buffer=w, tokens_per_step=t, dtype_bytes=d, measured_bytes=m) for w, t, d, m in samples]
    assert memscale.calibrate_reservation(dicts).safety_factor == cal.safety_factor
    g = graph("llama7b_infer.json")
    p = memscale.plan(g, hardware=hw24(), memory_budget="20GiB", calibration=cal)
    assert p.reservation.calibrated and p.reservation.calibration_samples == len(samples)
    assert p.reservation.safety_factor == pytest.approx(factor)
    assert json.loads(p.to_json())["reservation"]["calibrated"] is True
    with pytest.raises(memscale.ConfigError, match="no samples"):
        memscale.calibrate_reservation([])


def test_tier_search_from_keywords_and_from_a_graph():
    r = memscale.search_tier_policy(weights_bytes=20 << 30, kv_cache_bytes=8 << 30, activation_bytes=1 << 30,
                                    gpu_capacity=12 << 30, cpu_capacity=64 << 30, disk_capacity=1 << 40,
                                    compute_s=0.01, fixed={"activations": {"gpu": 100, "cpu": 0}})
    assert r.cost.gpu_bytes <= 12 << 30
    assert r.policy.activations == memscale.TierSplit(100, 0)
    assert r.cost.total_s >= r.cost.io_s > 0
    problem = memscale.tier_problem(graph("llama7b_infer.json"), hardware=hw24())
    assert problem.gpu_capacity == memscale.plan(graph("llama7b_infer.json"), hardware=hw24()).budget_bytes
    assert memscale.search_tier_policy(problem).cost.gpu_bytes <= problem.gpu_capacity
    with pytest.raises(memscale.InfeasibleBudgetError, match="do not fit") as info:
        memscale.search_tier_policy(weights_bytes=100 << 30, kv_cache_bytes=0, activation_bytes=0,
                                    gpu_capacity=1 << 30, cpu_capacity=1 << 30, disk_capacity=1 << 30)
    assert info.value.min_budget_bytes > 1 << 30
