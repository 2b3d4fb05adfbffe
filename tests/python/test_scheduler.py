"""memscale.Scheduler: batches sized to the budget, measured peaks within it, queueing,
refusals, several models sharing one budget."""
from __future__ import annotations

import pytest
import torch

import memscale
from memscale.runtime.inference.memory_model import calibrate
from pager_models import build_gpt


@pytest.fixture(scope="module")
def small():
    model = build_gpt(n_layers=2)
    return model, calibrate(model)


def _prompt(n, seed=0):
    return torch.randint(0, 512, (n,), generator=torch.Generator().manual_seed(seed))


def test_batches_fit_the_budget_and_everything_completes(small):
    model, mm = small
    budget = mm.predict(3, 32, 16)["total"]  # room for about three long requests at once
    sched = memscale.Scheduler(budget)
    sched.add_model("gpt", model, mm)
    requests = [sched.submit("gpt", _prompt(p, i), g) for i, (p, g) in
                enumerate([(32, 16), (8, 4)] * 6 + [(32, 4)] * 4)]
    report = sched.run()
    assert report.completed == len(requests) and report.waiting == 0
    assert report.over_budget_batches == 0
    assert 0 < report.measured_peak_bytes <= budget
    for b in report.batches:
        assert b.predicted["total"] <= budget
        assert b.measured_peak_bytes <= budget
    short = [b.batch for b in report.batches if b.prompt == 8]
    long = [b.batch for b in report.batches if b.prompt == 32]
    assert max(short) > max(long), "short requests batch wider than long ones"
    for r in requests:
        assert r.tokens.shape[0] == r.prompt_len + r.max_new_tokens
        assert torch.equal(r.tokens[:r.prompt_len], r.prompt)
    assert report.tokens_per_second > 0 and report.generated_tokens == sum(r.max_new_tokens for r in requests)


def test_what_does_not_fit_waits_for_the_next_batch(small):
    model, mm = small
    budget = mm.predict(2, 16, 8)["total"]
    sched = memscale.Scheduler(budget)
    sched.add_model("gpt", model, mm)
    for i in range(5):
        sched.submit("gpt", _prompt(16, i), 8)
    first = sched.next_batch()
    assert len(first) == 2
    report = sched.run()
    assert [b.batch for b in report.batches] == [2, 2, 1]
    assert report.over_budget_batches == 0


def test_batched_output_rows_equal_the_same_batch_generated_directly(small):
    model, mm = small
    sched = memscale.Scheduler(mm.predict(4, 16, 6)["total"])
    sched.add_model("gpt", model, mm)
    reqs = [sched.submit("gpt", _prompt(16, i), 6) for i in range(4)]
    sched.run()
    direct = memscale.runtime.inference.generate(model, torch.stack([r.prompt for r in reqs]), 6)
    for row, r in enumerate(reqs):
        assert torch.equal(r.tokens, direct.tokens[row])


def test_two_models_share_the_budget(small):
    model, mm = small
    other = build_gpt(seed=1, n_layers=3)
    mm2 = calibrate(other)
    budget = mm.weight_bytes + mm2.weight_bytes + 2 * max(mm.predict(2, 16, 8)["kv_cache"] + mm.activation_bytes(2, 16),
                                                          mm2.predict(2, 16, 8)["kv_cache"] + mm2.activation_bytes(2, 16))
    sched = memscale.Scheduler(budget)
    sched.add_model("a", model, mm)
    sched.add_model("b", other, mm2)
    assert sched.predict("a", 1, 16, 8)["other_weights"] == mm2.weight_bytes
    for i in range(4):
        sched.submit("a", _prompt(16, i), 8)
        sched.submit("b", _prompt(16, 10 + i), 8)
    report = sched.run()
    assert {b.model for b in report.batches} == {"a", "b"}
    assert report.completed == 8 and report.over_budget_batches == 0
    assert report.measured_peak_bytes <= budget


def test_a_request_that_cannot_fit_alone_is_refused_with_the_budget_it_needs(small):
    model, mm = small
    sched = memscale.Scheduler(mm.predict(1, 8, 4)["total"])
    sched.add_model("gpt", model, mm)
    need = mm.predict(1, 64, 32)["total"]
    with pytest.raises(memscale.InfeasibleBudgetError, match=f"needs {need} bytes alone") as err:
        sched.submit("gpt", _prompt(64), 32)
    assert err.value.min_budget_bytes == need
    assert not sched.waiting


def test_weights_over_the_budget_are_refused_at_add_model(small):
    model, mm = small
    sched = memscale.Scheduler(mm.weight_bytes - 1)
    with pytest.raises(memscale.InfeasibleBudgetError, match="resident weights of the models"):
        sched.add_model("gpt", model, mm)


def test_bad_requests_are_clear_errors(small):
    model, mm = small
    sched = memscale.Scheduler("1GB")
    sched.add_model("gpt", model, mm)
    with pytest.raises(memscale.ConfigError, match="model: got 'nope', registered: gpt"):
        sched.submit("nope", _prompt(4), 2)
    with pytest.raises(memscale.ConfigError, match="prompt: expected a non-empty 1-D tensor"):
        sched.submit("gpt", torch.zeros(2, 3, dtype=torch.long), 2)
    with pytest.raises(memscale.ConfigError, match="max_new_tokens: got 0"):
        sched.submit("gpt", _prompt(4), 0)
    with pytest.raises(memscale.ConfigError, match="exceed 'gpt'.s max_seq 128"):
        sched.submit("gpt", _prompt(120), 16)
    with pytest.raises(memscale.ConfigError, match="memory_budget"):
        memscale.Scheduler("lots")
    with pytest.raises(memscale.ConfigError, match="max_batch"):
        memscale.Scheduler("1GB", max_batch=0)
    with pytest.raises(memscale.ConfigError, match="already registered"):
        sched.add_model("gpt", model, mm)


def test_fixed_batch_baseline_and_worst_case_size(small):
    model, mm = small
    budget = mm.predict(3, 32, 16)["total"]
    sched = memscale.Scheduler(budget)
    sched.add_model("gpt", model, mm)
    worst = sched.worst_case_batch("gpt", 32, 16)
    assert worst == 3
    fixed = memscale.Scheduler(budget, fixed_batch=worst)
    fixed.add_model("gpt", model, mm)
    for i in range(7):
        fixed.submit("gpt", _prompt(8, i), 4)
    report = fixed.run()
    assert [b.batch for b in report.batches] == [3, 3, 1]
    assert report.over_budget_batches == 0


def test_calibration_predicts_at_least_the_measured_activation_peak(small):
    model, mm = small
    assert mm.kv_bytes_per_token == 2 * 2 * model.config.d_model * 4
    assert mm.widest_buffer == max(model.config.d_model, model.config.d_ff)
    assert mm.safety_factor > 0
    sched = memscale.Scheduler("1GB")
    sched.add_model("gpt", model, mm)
    for i in range(6):
        sched.submit("gpt", _prompt(48, i), 12)
    report = sched.run()
    for b in report.batches:
        assert b.measured_peak_bytes <= b.predicted["total"], (b.batch, b.measured_peak_bytes, b.predicted)
