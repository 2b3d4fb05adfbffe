"""Issue 21: the learned policy stage. The shipped model is what training on the committed
dataset writes (byte for byte) and what the engine compiled in; held out by family it is no
slower than the rules alone on >= 80% of the measured cases and always within the budget;
with auto_policy off plans are the rule engine's; wrap applies a stage plan whose training
matches the unwrapped model's."""
from __future__ import annotations

import json

import pytest
import torch

import memscale
from memscale import _C
from memscale.api import plan_of, unwrap, wrap
from memscale.memory import track_memory
from memscale.policy.evaluate import evaluate
from memscale.policy.train import DATA, train
from memscale.testing import hf_models
from memscale.testing.measure import measured_step_peak

pytest.importorskip("sklearn")


def test_retraining_reproduces_the_shipped_model_byte_for_byte() -> None:
    assert train(DATA / "dataset.json") == (DATA / "model.json").read_text()


def test_the_engine_plans_with_the_shipped_model_file() -> None:
    assert _C.policy_shipped_model_json() == (DATA / "model.json").read_text()


def test_held_out_by_family_no_slower_on_80_percent_and_within_budget() -> None:
    result = evaluate(json.loads((DATA / "dataset.json").read_text()))
    assert len(result["families"]) >= 4
    assert result["not_slower_share"] >= 0.8, result
    assert result["within_budget_share"] == 1.0, result


def test_the_dataset_labels_are_its_measurements() -> None:
    from memscale.policy.dataset import label_of

    dataset = json.loads((DATA / "dataset.json").read_text())
    assert all(label_of(case["strategies"]) == case["label"] for case in dataset["cases"])


@pytest.fixture
def llama() -> hf_models.Case:
    if not hf_models.available():
        pytest.skip("transformers not installed")
    return hf_models.build("llama", batch=4, seq=64, labels=False)


def _graph(case: hf_models.Case):
    from memscale.profiler.profile import profile

    return profile(case.model, case.inputs, training=True, optimizer="adamw",
                   loss_fn=lambda out, batch: case.loss_fn(out))


def test_auto_policy_off_is_the_rules_plan_and_on_names_its_choice(llama: hf_models.Case) -> None:
    graph = _graph(llama)
    peak = memscale.plan(graph, memory_budget=2**40, force_optimize=True).unoptimized_peak_bytes
    budget = int(peak * 0.85)  # the HF llama's minimum is about 0.73 of its peak
    default = memscale.plan(graph, memory_budget=budget).to_json()
    off = memscale.plan(graph, memory_budget=budget, auto_policy=False).to_json()
    on = memscale.plan(graph, memory_budget=budget, auto_policy=True)
    assert off == default and "auto_policy" not in off
    assert any(line.startswith("auto_policy: chose") for line in on.trace)
    assert on.predicted_peak_bytes <= budget
    assert memscale.plan(graph, memory_budget=budget, auto_policy=True).to_json() == on.to_json()


def test_wrap_with_auto_policy_trains_like_the_unwrapped_model(llama: hf_models.Case) -> None:
    reference = hf_models.build("llama", batch=4, seq=64, labels=False)
    peak = measured_step_peak(reference.model, reference.inputs, loss_fn=reference.loss_fn)
    budget = int(peak * 0.85)
    torch.manual_seed(0)
    plain = hf_models.build("llama", batch=4, seq=64, labels=False)
    with track_memory("cpu") as tracker:  # weights, optimizer state and memscale's own buffers counted
        wrapped = hf_models.build("llama", batch=4, seq=64, labels=False)
        wrap(wrapped.model, memscale.Config(memory_budget=budget, auto_policy=True), example_inputs=wrapped.inputs,
             loss_fn=lambda out, batch: wrapped.loss_fn(out))
        assert any(line.startswith("auto_policy: chose") for line in plan_of(wrapped.model).trace)
        optimizer = torch.optim.AdamW(wrapped.model.parameters(), lr=1e-3)
        for _ in range(3):
            wrapped.loss_fn(wrapped.model(**wrapped.inputs)).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        tracker.reset_peak()
        loss = wrapped.loss_fn(wrapped.model(**wrapped.inputs))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        assert tracker.peak_bytes <= 1.05 * budget
    plain_opt = torch.optim.AdamW(plain.model.parameters(), lr=1e-3)
    for _ in range(3):
        plain.loss_fn(plain.model(**plain.inputs)).backward()
        plain_opt.step()
        plain_opt.zero_grad(set_to_none=True)
    plain_loss = plain.loss_fn(plain.model(**plain.inputs))
    torch.testing.assert_close(loss.detach(), plain_loss.detach(), rtol=1e-5, atol=1e-6)
    unwrap(wrapped.model)
