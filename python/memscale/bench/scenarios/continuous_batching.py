"""Continuous batching (``memscale.ContinuousScheduler``) against the same-length batching
of ``memscale.Scheduler`` and a fixed worst-case batch, on one request stream for two
Hugging Face causal LMs built from configs (Llama, GPT-2) sharing one budget.

Every run measures each iteration's (or batch's) peak with ``memscale.track_memory`` plus
the models' resident weights; throughput counts the tokens the requests asked for, over
the wall time of the run; latency is submit-to-finish (all requests are submitted at the
start, so it includes queueing). Runs are interleaved, the median of the repeats is kept.
The continuous runs' outputs are checked against the same-length runs' (greedy, fp32).
"""
from __future__ import annotations

import os
import random
import statistics
from typing import Any

import torch

from memscale.runtime.inference.memory_model import calibrate
from memscale.bench.scenarios.scheduler import budget_and_worst_case_batch
from memscale.scheduler import Scheduler
from memscale.serving import ContinuousScheduler
from memscale.serving.report import quantile

PROMPTS = (8, 16, 32)
VOCAB = 2048


def _models() -> dict[str, torch.nn.Module]:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                                         max_position_embeddings=128)).eval()
    torch.manual_seed(1)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=128, n_layer=4, n_head=4, vocab_size=VOCAB, n_positions=128,
                                      bos_token_id=0, eos_token_id=0)).eval()
    return {"llama": llama, "gpt2": gpt2}


def _stream(n: int, seed: int, max_new: int) -> list[tuple[str, torch.Tensor, int]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = rng.choice(PROMPTS)
        ids = torch.randint(1, VOCAB, (prompt,), generator=torch.Generator().manual_seed(i))
        out.append((rng.choice(("llama", "gpt2")), ids, rng.randint(2, max_new)))
    return out


def _continuous(models, memories, budget, stream, projection) -> dict[str, Any]:
    sched = ContinuousScheduler(budget, projection=projection)
    for name, model in models.items():
        sched.add_model(name, model, memories[name])
    reqs = [sched.submit(m, ids, n) for m, ids, n in stream]
    report = sched.run()
    return {"tokens_per_s": report.tokens_per_second, "p50_latency_s": report.latency(0.5),
            "p99_latency_s": report.latency(0.99), "measured_peak_bytes": report.measured_peak_bytes,
            "over_budget": report.over_budget_iterations, "iterations": report.iterations,
            "preemptions": report.preemptions, "rules": report.rules,
            "resident_peak_bytes": report.resident_peak_bytes,
            "outputs": [r.generated for r in reqs]}


def _batched(models, memories, budget, stream, fixed_batch) -> dict[str, Any]:
    sched = Scheduler(budget, fixed_batch=fixed_batch)
    for name, model in models.items():
        sched.add_model(name, model, memories[name])
    reqs = [sched.submit(m, ids, n) for m, ids, n in stream]
    report = sched.run()
    latencies = [r.finished_at - r.submitted_at for r in reqs]
    return {"tokens_per_s": report.tokens_per_second, "p50_latency_s": quantile(latencies, 0.5),
            "p99_latency_s": quantile(latencies, 0.99), "measured_peak_bytes": report.measured_peak_bytes,
            "over_budget": report.over_budget_batches, "batches": len(report.batches),
            "outputs": [r.tokens[r.prompt_len:].tolist() for r in reqs]}


def run(quick: bool, threads: int | None = None) -> list[dict[str, Any]]:
    threads = threads or max(1, (os.cpu_count() or 2) - 1)
    torch.set_num_threads(threads)
    n_requests, max_new, repeats = (48, 24, 1) if quick else (120, 48, 2)
    models = _models()
    memories = {name: calibrate(m) for name, m in models.items()}
    budget, fixed = budget_and_worst_case_batch(models, memories, max(PROMPTS), max_new)
    fixed = max(1, fixed)
    stream = _stream(n_requests, seed=7, max_new=max_new)

    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in ("continuous", "continuous_next_step", "same_length",
                                                               "fixed_worst_case")}
    order = [("continuous", lambda: _continuous(models, memories, budget, stream, "max_length")),
             ("continuous_next_step", lambda: _continuous(models, memories, budget, stream, "next_step")),
             ("same_length", lambda: _batched(models, memories, budget, stream, None)),
             ("fixed_worst_case", lambda: _batched(models, memories, budget, stream, fixed))]
    for r in range(repeats):
        for name, go in (order if r % 2 == 0 else order[::-1]):
            runs[name].append(go())

    def summary(rs: list[dict[str, Any]]) -> dict[str, Any]:
        out = {k: statistics.median(x[k] for x in rs) for k in ("tokens_per_s", "p50_latency_s", "p99_latency_s")}
        out["measured_peak_bytes"] = max(x["measured_peak_bytes"] for x in rs)
        if "resident_peak_bytes" in rs[0]:
            out["resident_peak_bytes"] = max(x["resident_peak_bytes"] for x in rs)
        out["over_budget"] = sum(x["over_budget"] for x in rs)
        out.update({k: v for k, v in rs[0].items() if k not in out and k != "outputs"})
        return out

    s = {k: summary(v) for k, v in runs.items()}
    same_outputs = all(x["outputs"] == runs["same_length"][0]["outputs"]
                       for k in ("continuous", "continuous_next_step") for x in runs[k])
    ours = s["continuous"]
    return [{
        "scenario": "continuous_batching",
        "model": "HF Llama h128 L4 + HF GPT-2 h128 L4 (from configs)",
        "label": f"{n_requests} requests, prompts {list(PROMPTS)}, 2..{max_new} new tokens",
        "torch_threads": threads,
        "budget_bytes": budget,
        "requests": n_requests,
        "measured_peak_bytes": max(x["measured_peak_bytes"] for x in s.values()),
        "tokens_per_s": ours["tokens_per_s"],
        "continuous": ours,
        "baseline": {"continuous_next_step": s["continuous_next_step"], "same_length": s["same_length"],
                     "fixed_worst_case": {"batch": fixed, **s["fixed_worst_case"]}},
        "outputs_equal_same_length_batching": same_outputs,
        "ratios": {
            "throughput_vs_same_length": ours["tokens_per_s"] / s["same_length"]["tokens_per_s"],
            "throughput_vs_fixed_worst_case": ours["tokens_per_s"] / s["fixed_worst_case"]["tokens_per_s"],
            "next_step_throughput_vs_same_length": (s["continuous_next_step"]["tokens_per_s"]
                                                    / s["same_length"]["tokens_per_s"]),
            "peak_over_budget": ours["measured_peak_bytes"] / budget,
            "next_step_peak_over_budget": s["continuous_next_step"]["measured_peak_bytes"] / budget,
            "resident_over_budget": ours["resident_peak_bytes"] / budget,
            "next_step_resident_over_budget": s["continuous_next_step"]["resident_peak_bytes"] / budget,
        },
        "measurement": "track_memory('cpu') per iteration / batch + the models' resident weights; median "
                       "throughput and latency over interleaved runs; all requests submitted at the start",
        "resident_meter": "psutil RSS growth over the run's start (after malloc_trim), sampled every iteration, "
                          "+ the models' resident weights",
    }]


if __name__ == "__main__":
    from memscale.bench.records import scenario_main

    raise SystemExit(scenario_main(run))
