"""memscale.ContinuousScheduler: iteration-level batching of Hugging Face causal LMs built
from configs; outputs equal to each request generated alone; admission, preemption (swap /
recompute) and the measured peak within the budget. Run with -W error::FutureWarning."""
from __future__ import annotations

import warnings

import pytest
import torch

import memscale
from memscale import _C
from memscale.runtime.inference.memory_model import calibrate

transformers = pytest.importorskip("transformers")
from transformers.cache_utils import DynamicCache  # noqa: E402

VOCAB = 300


def _llama():
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=VOCAB, max_position_embeddings=128)).eval()


def _gpt2():
    torch.manual_seed(1)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=128, bos_token_id=0, eos_token_id=0)).eval()


BUILDERS = {"llama": _llama, "gpt2": _gpt2}


@pytest.fixture(scope="module")
def models():
    # one thread: these models are tiny, and on a shared machine a second OpenMP thread
    # makes each matmul wait for a busy core (milliseconds instead of microseconds)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    for name, build in BUILDERS.items():
        model = build()
        out[name] = (model, calibrate(model))
    yield out
    torch.set_num_threads(threads)


def _alone(model, prompt, n):
    """Greedy generation of one request by itself through the Cache API."""
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        logits = model(input_ids=prompt[None], cache=cache, use_cache=True, logits_to_keep=1).logits
        tokens = []
        for i in range(n):
            tokens.append(int(logits[0, -1].argmax()))
            if i + 1 < n:
                logits = model(input_ids=torch.tensor([[tokens[-1]]]), cache=cache, use_cache=True,
                               logits_to_keep=1).logits
    return tokens


def _stream(n, seed, prompt=(2, 40), new=(1, 24)):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p = int(torch.randint(prompt[0], prompt[1] + 1, (1,), generator=g))
        out.append((torch.randint(1, VOCAB, (p,), generator=g), int(torch.randint(new[0], new[1] + 1, (1,), generator=g))))
    return out


@pytest.fixture(autouse=True)
def _future_warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        yield


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_continuous_batch_outputs_equal_each_request_alone(models, family):
    model, mm = models[family]
    sched = memscale.ContinuousScheduler("1GB", max_batch=5)
    sched.add_model(family, model, mm)
    stream = _stream(24, seed=3)
    reqs = [sched.submit(family, p, n) for p, n in stream]
    report = sched.run()
    assert report.completed == len(reqs) and not sched.pending()
    for r, (p, n) in zip(reqs, stream):
        assert r.generated == _alone(model, p, n), r.id
        assert torch.equal(r.tokens[:p.numel()], p) and len(r.generated) == n
    # iteration-level: rows joined while others ran, so fewer iterations than batches run to their end would need
    assert report.rules["serving.admit"] == len(reqs) and report.rules.get("serving.batch_full", 0) > 0
    assert report.iterations < sum(n for _, n in stream) / 2
    assert report.measured_peak_bytes <= report.budget_bytes


def test_max_length_admission_fits_the_budget_without_preemption(models):
    model, mm = models["llama"]
    stream = _stream(16, seed=5)
    probe = memscale.ContinuousScheduler("1GB")
    probe.add_model("llama", model, mm)
    alone = max(_C.serving_alone_bytes(probe._state(), probe._engine_request(probe.submit("llama", p, n)))
                for p, n in stream)
    sched = memscale.ContinuousScheduler(int(alone * 1.6))
    sched.add_model("llama", model, mm)
    reqs = [sched.submit("llama", p, n) for p, n in stream]
    report = sched.run()
    assert report.completed == 16 and report.preemptions == 0
    assert report.rules.get("serving.wait_memory", 0) > 0
    assert 0 < report.measured_peak_bytes <= report.budget_bytes
    assert report.projected_peak_bytes <= report.budget_bytes
    for r, (p, n) in zip(reqs, stream):
        assert r.generated == _alone(model, p, n)


def _engine_state(flops_per_token):
    m = _C.ServingModel()
    m.kv_bytes_per_token, m.layers, m.decode_reservation_per_row, m.prefill_reservation_per_token = 1000, 2, 100, 100
    m.flops_per_token = flops_per_token
    s = _C.ServingState()
    s.budget_bytes, s.weight_bytes, s.projection, s.models = 40_000, 1_000, "next_step", [m]
    rows = []
    for i, tokens in enumerate((10, 10, 10)):
        r = _C.ServingRequest()
        r.id, r.tokens, r.prefill_tokens, r.max_tokens = i, tokens, 5, 40
        rows.append(r)
    s.running = rows
    return s


def test_the_engine_preempts_the_last_admitted_by_cost():
    hw = memscale.Hardware.from_json('{"devices": [], "host_total_bytes": 0, "host_available_bytes": 0}')
    # 3 rows x 11 tokens x 1000 B of KV + one layer copy + weights: 50.8 kB, over 40 kB; 2 rows: 34.2 kB
    cheap_recompute = _C.serving_decide(_engine_state(1.0), hw)
    assert [(a.action, a.id, a.rule) for a in cheap_recompute.actions] == [
        ("preempt_recompute", 2, "serving.preempt_recompute")]
    assert "rather than swap" in cheap_recompute.actions[0].reason
    assert cheap_recompute.projected_bytes <= 40_000
    cheap_swap = _C.serving_decide(_engine_state(1e12), hw)
    assert [(a.action, a.rule) for a in cheap_swap.actions] == [("preempt_swap", "serving.preempt_swap")]
    assert "to disk and back" in cheap_swap.actions[0].reason
    roomy = _engine_state(1.0)
    roomy.budget_bytes = 10**9
    q = _C.ServingRequest()
    q.id, q.prefill_tokens, q.max_tokens = 7, 5, 9
    roomy.queued = [q]
    assert [(a.action, a.rule) for a in _C.serving_decide(roomy, hw).actions] == [("admit", "serving.admit")]
    roomy.projection = "sometimes"
    with pytest.raises(memscale.ConfigError, match='projection: got "sometimes"'):
        _C.serving_decide(roomy, hw)


def test_next_step_projection_preempts_and_outputs_stay_identical(models):
    model, mm = models["llama"]
    stream = _stream(20, seed=7, prompt=(2, 12), new=(10, 30))
    sched = memscale.ContinuousScheduler("1GB", projection="next_step")
    sched.add_model("llama", model, mm)
    alone = max(_C.serving_alone_bytes(sched._state(), sched._engine_request(sched.submit("llama", p, n)))
                for p, n in stream)
    results = {}
    for expensive in (False, True):  # a recompute that costs more than a swap, and one that costs less
        sched = memscale.ContinuousScheduler(int(alone * 1.5), projection="next_step")
        sched.add_model("llama", model, mm)
        sched.models["llama"][2].flops_per_token = 1e12 if expensive else 1.0
        reqs = [sched.submit("llama", p, n) for p, n in stream]
        report = sched.run()
        assert report.completed == len(stream) and report.over_budget_iterations == 0
        assert report.measured_peak_bytes <= report.budget_bytes
        assert report.preemptions >= 2, report.rules
        results[expensive] = report.rules
        for r, (p, n) in zip(reqs, stream):
            assert r.generated == _alone(model, p, n), (r.id, r.preemptions)
    assert results[True].get("serving.preempt_swap", 0) >= 2 and results[True].get("serving.resume_swap", 0) >= 2
    assert results[False].get("serving.preempt_recompute", 0) >= 2
    assert results[False].get("serving.resume_recompute", 0) >= 2


def test_refusals_and_bad_arguments(models):
    model, mm = models["llama"]
    sched = memscale.ContinuousScheduler(mm.weight_bytes + 10_000)
    sched.add_model("llama", model, mm)
    with pytest.raises(memscale.InfeasibleBudgetError, match="alone, over the budget"):
        sched.submit("llama", torch.arange(1, 60), 40)
    assert not sched.queued
    with pytest.raises(memscale.ConfigError, match="model: got 'nope', registered: llama"):
        sched.submit("nope", torch.arange(1, 4), 2)
    with pytest.raises(memscale.ConfigError, match="max_new_tokens: got 0"):
        sched.submit("llama", torch.arange(1, 4), 0)
    with pytest.raises(memscale.ConfigError, match="projection: got 'often'"):
        memscale.ContinuousScheduler("1GB", projection="often")
    with pytest.raises(memscale.InfeasibleBudgetError, match="resident weights"):
        memscale.ContinuousScheduler(mm.weight_bytes - 1).add_model("llama", model, mm)
    with pytest.raises(memscale.ConfigError, match="continuous batching needs a causal LM"):
        memscale.ContinuousScheduler("1GB").add_model("mlp", torch.nn.Linear(2, 2), mm)


def test_load_two_models_under_a_budget_that_forces_preemption(models):
    """200 requests of mixed prompt and output lengths for two models: zero lost, zero over
    the budget at any iteration (measured), >= 10 preemptions, every output as alone."""
    stream = [(name, p, n) for i, (p, n) in enumerate(_stream(200, seed=11, prompt=(2, 12), new=(1, 30)))
              for name in (("llama", "gpt2")[i % 2],)]
    sched = memscale.ContinuousScheduler("1GB", projection="next_step", max_batch=32)
    for name, (model, mm) in models.items():
        sched.add_model(name, model, mm)
    alone = max(_C.serving_alone_bytes(sched._state(), sched._engine_request(sched.submit(m, p, n)))
                for m, p, n in stream)
    budget = alone + (alone - sched.weight_bytes) // 2  # room for about 1.5 of the largest requests
    sched = memscale.ContinuousScheduler(budget, projection="next_step", max_batch=32)
    for name, (model, mm) in models.items():
        sched.add_model(name, model, mm)
    reqs = [sched.submit(m, p, n) for m, p, n in stream]
    report = sched.run()
    assert report.completed == 200 and not sched.pending()
    assert report.over_budget_iterations == 0 and report.measured_peak_bytes <= budget
    assert report.measured_peak_bytes <= report.projected_peak_bytes
    assert report.resident_peak_bytes >= sched.weight_bytes and "psutil" in report.resident_meter  # measured beside
    assert report.preemptions >= 10, report.rules
    for r, (m, p, n) in zip(reqs, stream):
        assert r.generated == _alone(models[m][0], p, n), (r.id, r.preemptions)
