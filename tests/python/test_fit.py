"""Issue 19, fit advisor: ``memscale.fit`` / ``memscale fit`` on a GPT-style model, a
Hugging Face Llama built from a config and a CNN. The budget is a fraction of the
measured unoptimized step peak at batch 4; at the answer a wrapped training step is
measured within 1.05 x the budget, and at answer + 1 the engine refuses the profiled step
(no plan of any technique set fits). Bad inputs are refused naming what is allowed."""
from __future__ import annotations

import json
from typing import Any

import pytest
import torch

import memscale
from memscale.advisor.resize import resize_inputs
from memscale.cli import main as cli_main
from memscale.testing import hf_models, models
from memscale.testing.measure import measured_step_peak
from profile_gap import predicted_unoptimized_peak, xfail_on_profile_gap

BATCH = 4


def gpt_case() -> tuple[Any, Any]:
    model = models.build("gpt", n_layers=2, d_model=64, d_ff=256, vocab=256, max_seq=64, dropout=0.0)
    return model, models.example_inputs("gpt", model, batch=BATCH, seq=32, labels=True)


def llama_case() -> tuple[Any, Any]:
    case = hf_models.llama(batch=BATCH, seq=32)
    return case.model, case.inputs


def cnn_case() -> tuple[Any, Any]:
    model = models.build("resnet", layers=(1, 1, 1, 1))
    return model, models.example_inputs("resnet", model, batch=BATCH, labels=True)


CASES = {"gpt": gpt_case, "hf-llama": llama_case, "resnet": cnn_case}


@pytest.mark.parametrize("name", list(CASES))
def test_answer_trains_within_budget_and_the_next_batch_does_not_fit(name: str) -> None:
    if name == "hf-llama" and not hf_models.available():
        pytest.skip("transformers is not installed")
    torch.manual_seed(0)
    model, inputs = CASES[name]()
    # halfway between the smallest budget of batch 4 and its measured unoptimized peak, and at
    # least 1.25 x that smallest budget (a CNN whose minimum is near its unoptimized peak)
    floor = memscale.fit(model, inputs, None, vary=None).min_budget_bytes
    budget = max(floor * 5 // 4, (floor + measured_step_peak(model, inputs, seed=0)) // 2)
    result = memscale.fit(model, inputs, budget, vary="batch")
    assert result.vary == "batch" and result.given_size == BATCH and not result.capped
    assert result.size >= BATCH and result.plan.predicted_peak_bytes <= budget
    assert result.min_budget_bytes == floor
    assert result.next_min_budget_bytes > budget
    # the next size up, profiled: the engine has no plan within the budget
    graph_next = memscale.profile(model, resize_inputs(inputs, "batch", result.size + 1))
    with pytest.raises(memscale.InfeasibleBudgetError) as refused:
        memscale.plan(graph_next, memory_budget=budget, hardware=memscale.detect_hardware(device="cpu"))
    assert refused.value.min_budget_bytes > budget
    # the answer, measured: a wrapped training step stays within 1.05 x the budget
    at = resize_inputs(inputs, "batch", result.size)
    memscale.wrap(model, memscale.Config(memory_budget=budget), example_inputs=at)
    refusal = None
    try:
        peak = measured_step_peak(model, at, seed=0)
    except memscale.InfeasibleBudgetError as refused_at_first_step:  # fit answered, the first step refused
        refusal = refused_at_first_step
    finally:
        memscale.unwrap(model)
    if refusal is not None:
        xfail_on_profile_gap(name, predicted_unoptimized_peak(model, at), measured_step_peak(model, at, seed=0), refusal)
    print(f"\n{name}: budget {budget}, answer batch {result.size}, measured {peak} ({peak / budget:.3f} x)")
    assert peak <= 1.05 * budget


class Contrastive(torch.nn.Module):
    """A batch x batch similarity (a contrastive loss): quadratic in batch, which two batch
    profiles do not show."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(64, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.proj(x)
        return (z @ z.T).logsumexp(1).mean()


def test_check_profile_catches_a_term_the_fit_points_miss() -> None:
    torch.manual_seed(0)
    model, x = Contrastive(), torch.randn(4, 64)
    hw = memscale.detect_hardware(device="cpu")
    result = memscale.fit(model, (x,), "4MiB", vary="batch", hardware=hw)
    # the line through batch 4 and 8 overshoots; the check refuses it and the re-fit is quadratic
    assert len(result.profiled_sizes) > 3 and result.quadratic
    assert result.plan.predicted_peak_bytes <= 4 << 20 and result.graph.batch == result.size
    nxt = memscale.profile(model, resize_inputs((x,), "batch", result.size + 1))
    with pytest.raises(memscale.InfeasibleBudgetError):
        memscale.plan(nxt, memory_budget="4MiB", hardware=hw)


def test_seq_fit_sees_attention_and_stops_at_the_engines_boundary() -> None:
    model, inputs = gpt_case()
    hw = memscale.detect_hardware(device="cpu")
    floor = memscale.fit(model, inputs, None, vary=None, hardware=hw).min_budget_bytes
    result = memscale.fit(model, inputs, floor, vary="seq", hardware=hw, max_size=64)
    # three profiles up to the model's 64 positions; the attention scores are seq x seq
    assert {21, 42, 64} <= set(result.profiled_sizes) and result.quadratic
    assert result.size >= 32 and not result.capped  # the given seq fits its own minimum; 64 does not
    nxt = memscale.profile(model, resize_inputs(inputs, "seq", result.size + 1))
    with pytest.raises(memscale.InfeasibleBudgetError):
        memscale.plan(nxt, memory_budget=floor, hardware=hw)


def meta_inference_case() -> tuple[Any, Any, Any, int]:
    """A Llama defined on meta, its inputs at batch 1 x 32, an 8 GiB CPU machine, and the
    smallest inference budget of those inputs."""
    with torch.device("meta"):
        model = models.build("llama")
    inputs = models.example_inputs("llama", model, batch=1, seq=32, labels=False, device="meta")
    hw = memscale.Hardware.from_json('{"devices": [], "host_total_bytes": 8589934592}')
    floor = memscale.fit(model, inputs, None, vary=None, training=False, hardware=hw).min_budget_bytes
    return model, inputs, hw, floor


def test_inference_fit_on_a_meta_definition() -> None:
    model, inputs, hw, floor = meta_inference_case()
    result = memscale.fit(model, inputs, 2 * floor, vary="batch", training=False, hardware=hw)
    assert result.size >= 1 and not result.plan.training
    assert result.plan.predicted_peak_bytes <= 2 * floor < result.next_min_budget_bytes


def test_inference_frontier_batch_shrinks_as_context_grows() -> None:
    model, inputs, hw, floor = meta_inference_case()
    rows = memscale.fit_frontier(model, inputs, 3 * floor, [16, 64], hardware=hw)
    assert [r.graph.seq for r in rows] == [16, 64]
    batches = [r.size for r in rows]
    assert batches[0] > batches[1] >= 1, batches  # the KV cache grows with batch x context
    assert all(r.plan.predicted_peak_bytes <= 3 * floor < r.next_min_budget_bytes for r in rows)
    with pytest.raises(memscale.ConfigError, match="ascending"):
        memscale.fit_frontier(model, inputs, 3 * floor, [64, 16], hardware=hw)


def test_bad_inputs_are_refused_with_what_is_allowed() -> None:
    model, inputs = gpt_case()
    with pytest.raises(memscale.ConfigError, match="vary must be one of.*'foo'"):
        memscale.fit(model, inputs, "1GiB", vary="foo")
    with pytest.raises(memscale.InfeasibleBudgetError, match="smallest budget for batch 1") as refused:
        memscale.fit(model, inputs, 1024, vary="batch")
    one = memscale.profile(model, resize_inputs(inputs, "batch", 1))
    assert refused.value.min_budget_bytes == memscale.fit(model, resize_inputs(inputs, "batch", 1), None, vary=None,
                                                          memory_budget="1GiB").min_budget_bytes
    assert refused.value.min_budget_bytes > 0 and one.batch == 1
    images = torch.zeros(2, 3, 8, 8)
    with pytest.raises(memscale.ConfigError, match="no example input has that axis"):
        memscale.fit(torch.nn.Conv2d(3, 4, 3), (images,), "1GiB", vary="seq")


def test_make_inputs_callable_sizes_the_inputs() -> None:
    model, inputs = gpt_case()
    sizes: list[int] = []

    def make(n: int) -> Any:
        sizes.append(n)
        return resize_inputs(inputs, "batch", n)
    result = memscale.fit(model, None, "32MiB", vary="batch", make_inputs=make, size=BATCH)
    assert sizes[:2] == [BATCH, 2 * BATCH] and result.size in sizes
    assert result.size == memscale.fit(model, inputs, "32MiB", vary="batch").size


def test_cli_prints_the_answer(capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["fit", "--model", "gpt", "--arg", "n_layers=2", "--budget", "32MiB", "--vary", "batch",
                     "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["vary"] == "batch" and doc["size"] >= 1 and doc["plan"]["predicted_peak_bytes"] <= 32 << 20
    assert doc["next_min_budget_bytes"] > 32 << 20
    assert cli_main(["fit", "--model", "llama", "--meta", "--inference", "--batch", "1", "--budget", "4MiB",
                     "--contexts", "16,32", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["context"] for r in rows] == [16, 32] and rows[0]["batch"] >= rows[1]["batch"] >= 1
    assert cli_main(["fit", "--model", "gpt", "--arg", "n_layers=2", "--budget", "1KiB"]) == 1
    assert "smallest budget for batch 1" in capsys.readouterr().err
