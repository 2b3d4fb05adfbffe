"""Predicted unoptimized training peak against the measured peak of the same step, on
Hugging Face models built from configs (memscale.testing.hf_models): the loss computed
inside from ``labels`` and outside by the plain ``F.cross_entropy`` loop, a LoRA adapter
(frozen base weights), bfloat16 autocast, a mixture of experts (transformers' grouped-mm
experts), encoder, encoder-decoder and vision models.

Measured: memscale.testing.measure.measured_step_peak (counting allocator; everything
resident during the step, including what was resident at its start). Predicted: the
engine's unoptimized peak of the profiled graph on a CPU-only machine, whose AdamW is
torch's per-tensor one (so the step measured uses torch's default, ``foreach=None``).
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import memscale
from memscale.profiler.profile import profile_dict
from memscale.testing import hf_models, models
from memscale.testing.measure import measured_step_peak

HOST = memscale.Hardware.from_json('{"devices": [], "host_total_bytes": 68719476736, "offload_dir_free_bytes": 1000000000}')
# The issue asks for 10% and never more than 10% under; the profiler is exact on these
# steps (a few bytes apart), so the bound is the 5% target.
TOLERANCE = 0.05


def predicted_peak(graph: dict) -> int:
    g = memscale.ModelGraph.from_json(json.dumps(graph))
    return memscale.plan(g, hardware=HOST, memory_budget=1 << 40, force_optimize=True).unoptimized_peak_bytes


@pytest.mark.parametrize("name, labels", hf_models.CASES,
                         ids=[f"{n}-{'loss_inside' if lab else 'loss_outside'}" for n, lab in hf_models.CASES])
def test_predicted_unoptimized_peak_matches_the_measured_step(name: str, labels: bool) -> None:
    case = hf_models.build(name, labels=labels)
    graph = profile_dict(case.model, case.inputs, optimizer="adamw", autocast=case.autocast)
    measured = measured_step_peak(case.model, case.inputs, loss_fn=case.loss_fn, autocast=case.autocast,
                                  foreach=None)
    predicted = predicted_peak(graph)
    assert abs(predicted - measured) <= TOLERANCE * measured, (predicted, measured)


def test_frozen_parameters_have_no_gradient_and_no_optimizer_state() -> None:
    case = hf_models.build("llama_lora")
    graph = profile_dict(case.model, case.inputs, optimizer="adamw")
    params = list(case.model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    total = sum(p.numel() * p.element_size() for p in params)
    assert 0 < trainable < total // 10
    assert sum(layer["grad_bytes"] for layer in graph["layers"]) == trainable
    assert sum(layer["optimizer_bytes"] for layer in graph["layers"]) == 2 * trainable
    assert sum(layer["param_bytes"] for layer in graph["layers"]) == total
    assert graph["largest_param_bytes"] == max(p.numel() * p.element_size() for p in params if p.requires_grad)
    # backward never reaches the frozen embedding (nothing before it trains): no incoming gradient
    receives = {layer["kind"]: layer["receives_grad"] for layer in graph["layers"]}
    assert receives["embedding"] is False and receives["block"] is True and receives["lm_head"] is True
    plain = hf_models.build("llama")
    assert {layer["kind"]: layer["receives_grad"] for layer in profile_dict(plain.model, plain.inputs)["layers"]}[
        "embedding"] is True


def test_autocast_keyword_and_the_callers_autocast_give_the_same_profile() -> None:
    case = hf_models.build("llama", labels=True)
    keyword = profile_dict(case.model, case.inputs, autocast=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ambient = profile_dict(case.model, case.inputs)
    plain = profile_dict(case.model, case.inputs)
    assert keyword == ambient
    # activations and logits in their real dtypes: the blocks' matmul outputs and the head's
    # logits in bfloat16 (its float32 log-softmax is saved beside them, so the head saves more)
    for bf16, fp32 in zip(keyword["layers"], plain["layers"]):
        if bf16["kind"] == "block":
            assert bf16["activation_bytes"] < 0.9 * fp32["activation_bytes"]
        if bf16["kind"] == "lm_head":
            assert 2 * bf16["output_bytes"] == fp32["output_bytes"]
            assert bf16["activation_bytes"] > fp32["activation_bytes"]
    with pytest.raises(ValueError, match="autocast"):
        profile_dict(case.model, case.inputs, autocast=torch.int8)


def test_measure_runs_under_the_same_autocast() -> None:
    case = hf_models.build("llama", labels=True, batch=2, seq=32)
    graph = profile_dict(case.model, case.inputs, autocast=torch.bfloat16, measure=True)
    for layer in graph["layers"]:
        assert layer["measured_activation_bytes"] == layer["activation_bytes"]


def test_head_and_loss_are_counted_once_loss_inside_or_outside() -> None:
    # the same model, its loss computed from labels or by the plain loop outside: the same
    # step, but for the logits the loop outside holds through the loss's backward
    inside = hf_models.build("gpt2", labels=True)
    outside = hf_models.build("gpt2", labels=False)
    g_in = profile_dict(inside.model, inside.inputs)
    g_out = profile_dict(outside.model, outside.inputs)
    head_in, head_out = g_in["layers"][-1], g_out["layers"][-1]
    assert head_in["kind"] == head_out["kind"] == "lm_head"
    logits = head_in["output_bytes"]
    # backward scratch above the incoming (logits-sized) gradient: the loss's second
    # logits-sized buffer, not the logits gradient again
    assert head_in["transient_bytes"] < 1.5 * logits
    assert abs(predicted_peak(g_in) + logits - predicted_peak(g_out)) <= 0.01 * predicted_peak(g_in)


def test_plain_loop_with_the_loss_outside_a_reference_model() -> None:
    model = models.build("gpt", n_layers=2)
    x, = models.example_inputs("gpt", model, batch=4, seq=64, labels=False)
    y = torch.randint(0, model.config.vocab, x.shape, generator=torch.Generator().manual_seed(1))
    graph = profile_dict(model, (x,))
    measured = measured_step_peak(model, (x,), loss_fn=lambda out: F.cross_entropy(out.flatten(0, 1), y.flatten()),
                                  foreach=None)
    assert abs(predicted_peak(graph) - measured) <= TOLERANCE * measured
