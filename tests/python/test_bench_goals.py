import json
import subprocess
import sys

from memscale.bench.goals import check

GOALS = {"goals": [
    {"id": "peak-within-budget", "scenario": "sweep", "ratio": "peak_over_budget", "op": "<=", "goal": 1.05,
     "tolerance": 0.0, "where": {"label": "80%"}},
    {"id": "throughput", "scenario": "offload", "ratio": "speedup", "op": ">=", "goal": 2.0, "tolerance": 0.1},
]}


def _write(tmp_path, records):
    goals = tmp_path / "goals.json"
    goals.write_text(json.dumps(GOALS))
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"records": records}))
    return goals, results


def _bench_check(goals, results):
    return subprocess.run([sys.executable, "-m", "memscale", "bench", "--check", "--goals", str(goals), "--from", str(results)],
                          capture_output=True, text=True)


def test_passing_records_pass(tmp_path):
    goals, results = _write(tmp_path, [
        {"scenario": "sweep", "label": "80%", "ratios": {"peak_over_budget": 0.99}},
        {"scenario": "sweep", "label": "35%", "ratios": {"peak_over_budget": 7.0}},  # not selected by `where`
        {"scenario": "offload", "ratios": {"speedup": 1.85}},  # within the 10% tolerance of 2.0
    ])
    done = _bench_check(goals, results)
    assert done.returncode == 0, done.stderr
    assert "2 checked, 0 missed" in done.stderr


def test_a_missed_goal_fails_the_check(tmp_path):
    goals, results = _write(tmp_path, [
        {"scenario": "sweep", "label": "80%", "ratios": {"peak_over_budget": 1.2}},
        {"scenario": "offload", "ratios": {"speedup": 2.5}},
    ])
    done = _bench_check(goals, results)
    assert done.returncode == 1
    assert "MISS peak-within-budget" in done.stderr and "peak_over_budget = 1.200" in done.stderr


def test_a_record_without_the_ratio_or_no_matching_record_fails():
    results = check([{"scenario": "offload", "ratios": {}}], GOALS["goals"])
    assert [r.passed for r in results] == [False]
    results = check([{"scenario": "sweep", "label": "35%", "ratios": {"peak_over_budget": 1.0}}], GOALS["goals"])
    assert [r.passed for r in results] == [False]


def test_timing_goals_can_be_left_out_and_optional_goals_need_their_ratio():
    goals = [{"id": "t", "scenario": "s", "ratio": "time", "op": "<=", "goal": 1.0, "tolerance": 0.0, "timing": True},
             {"id": "o", "scenario": "s", "ratio": "vs_peer", "op": "<=", "goal": 0.9, "tolerance": 0.0, "optional": True}]
    records = [{"scenario": "s", "ratios": {"time": 5.0}}, {"scenario": "s", "ratios": {"time": 0.5, "vs_peer": 1.5}}]
    assert [(r.goal_id, r.passed) for r in check(records, goals)] == [("t", False), ("t", True), ("o", False)]
    assert [(r.goal_id, r.passed) for r in check(records, goals, timing=False)] == [("o", False)]


def test_quick_records_use_the_quick_tolerance_and_full_records_the_strict_one():
    goals = [{"id": "t", "scenario": "s", "ratio": "time", "op": "<=", "goal": 0.9, "tolerance": 0.0,
              "quick_tolerance": 0.15, "timing": True}]
    quick = [{"scenario": "s", "quick": True, "ratios": {"time": 1.0}}]
    full = [{"scenario": "s", "quick": False, "ratios": {"time": 1.0}}]
    assert [r.passed for r in check(quick, goals)] == [True]
    assert "quick-run tolerance 15%" in check(quick, goals)[0].message
    assert [r.passed for r in check(full, goals)] == [False]
    assert [r.passed for r in check([{"scenario": "s", "quick": True, "ratios": {"time": 1.36}}], goals)] == [False]


def test_the_committed_goals_give_quick_tolerances_only_to_timing_goals():
    from memscale.bench.goals import default_goals_path, load_goals

    goals = load_goals(default_goals_path())
    widened = [g for g in goals if "quick_tolerance" in g]
    assert widened and all(g.get("timing") and g["quick_tolerance"] >= g["tolerance"] for g in widened)


def test_the_goals_ship_inside_the_package():
    """``memscale bench --check`` reads them from an installed wheel: no checkout needed."""
    from pathlib import Path

    import memscale
    from memscale.bench.goals import default_goals_path, load_goals

    path = default_goals_path()
    assert path.parent == Path(memscale.__file__).resolve().parent / "bench"
    assert len(load_goals(path)) >= 10


def test_a_known_miss_passes_only_the_records_it_names(tmp_path):
    goals = tmp_path / "goals.json"
    goals.write_text(json.dumps({"goals": [
        {"id": "accuracy", "scenario": "est", "ratio": "abs_error", "op": "<=", "goal": 0.05, "tolerance": 0.0,
         "known_miss": "open", "known_miss_where": {"model": "cnn"}}]}))
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"records": [
        {"scenario": "est", "model": "cnn", "ratios": {"abs_error": 0.2}},
        {"scenario": "est", "model": "gpt", "ratios": {"abs_error": 0.01}}]}))
    done = _bench_check(goals, results)
    assert done.returncode == 0, done.stderr
    assert "KNOWN MISS accuracy [cnn]" in done.stderr
    results.write_text(json.dumps({"records": [
        {"scenario": "est", "model": "cnn", "ratios": {"abs_error": 0.2}},
        {"scenario": "est", "model": "gpt", "ratios": {"abs_error": 0.2}}]}))
    done = _bench_check(goals, results)
    assert done.returncode != 0 and "MISS accuracy [gpt]" in done.stderr, done.stderr
