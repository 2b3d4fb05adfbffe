"""Scheduler on a simulated request stream for two GPT-style models sharing a
fixed budget, against the same stream served with a fixed batch size chosen so that the
worst-case request (longest prompt, longest generation) fits.

Both runs measure every batch's peak with ``memscale.track_memory('cpu')`` (plus the
models' resident weights): an "out of memory" is a batch whose measured peak exceeds the
budget. Throughput counts the tokens each request asked for.
"""
from __future__ import annotations

import os
import random
import statistics
from typing import Any

import torch


from memscale.scheduler import Scheduler
from memscale.testing.models import gpt
from memscale.runtime.inference.memory_model import calibrate

PROMPTS = (16, 32, 64)
PROMPT_WEIGHTS = (0.5, 0.3, 0.2)


def _stream(n: int, seed: int, max_new: int) -> list[tuple[str, int, int, int]]:
    """(model, prompt length, new tokens, token seed) of ``n`` requests."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        model = "small" if rng.random() < 0.6 else "large"
        prompt = rng.choices(PROMPTS, PROMPT_WEIGHTS)[0]
        out.append((model, prompt, rng.randint(4, max_new), i))
    return out


def budget_and_worst_case_batch(models: dict[str, Any], memories: dict[str, Any], prompt: int,
                                new: int) -> tuple[int, int]:
    """The stream's budget, the weights of every model plus room for four worst-case
    requests (``prompt``, ``new``) of the larger one, and the fixed batch size whose worst
    case fits it."""
    worst = {name: mm.predict(4, prompt, new) for name, mm in memories.items()}
    budget = sum(mm.weight_bytes for mm in memories.values()) + max(
        w["kv_cache"] + w["activations"] for w in worst.values())
    probe = Scheduler(budget)
    for name, model in models.items():
        probe.add_model(name, model, memories[name])
    return budget, min(probe.worst_case_batch(name, prompt, new) for name in models)


def _serve(models: dict[str, Any], memories: dict[str, Any], budget: int, stream: list, vocab: int,
           fixed_batch: int | None) -> Any:
    sched = Scheduler(budget, fixed_batch=fixed_batch)
    for name, model in models.items():
        sched.add_model(name, model, memories[name])
    for name, prompt, new, seed in stream:
        ids = torch.randint(0, vocab, (prompt,), generator=torch.Generator().manual_seed(seed))
        sched.submit(name, ids, new)
    return sched.run()


def run(quick: bool, threads: int | None = None) -> list[dict[str, Any]]:
    threads = threads or max(1, (os.cpu_count() or 2) - 1)
    torch.set_num_threads(threads)
    n_requests, max_new, repeats = (24, 16, 1) if quick else (64, 32, 2)
    vocab = 2048
    models = {
        "small": gpt.build(seed=0, d_model=256, n_heads=4, n_layers=4, d_ff=1024, vocab=vocab, max_seq=128).eval(),
        "large": gpt.build(seed=1, d_model=384, n_heads=6, n_layers=6, d_ff=1536, vocab=vocab, max_seq=128).eval(),
    }
    memories = {name: calibrate(m) for name, m in models.items()}
    budget, fixed = budget_and_worst_case_batch(models, memories, max(PROMPTS), max_new)
    stream = _stream(n_requests, seed=7, max_new=max_new)

    adaptive_runs, fixed_runs = [], []
    for r in range(repeats):
        order = [("adaptive", None, adaptive_runs), ("fixed", fixed, fixed_runs)]
        for _, fb, runs in (order if r % 2 == 0 else order[::-1]):
            runs.append(_serve(models, memories, budget, stream, vocab, fb))

    def summary(runs: list) -> dict[str, Any]:
        return {
            "tokens_per_s": statistics.median(x.tokens_per_second for x in runs),
            "wall_seconds": [x.wall_seconds for x in runs],
            "measured_peak_bytes": max(x.measured_peak_bytes for x in runs),
            "predicted_peak_bytes": max(x.predicted_peak_bytes for x in runs),
            "over_budget_batches": sum(x.over_budget_batches for x in runs),
            "batches": len(runs[0].batches),
            "batch_sizes": runs[0].to_dict()["batch_sizes"],
            "completed": runs[0].completed,
        }

    ours, base = summary(adaptive_runs), summary(fixed_runs)
    # Measured over predicted for what the batch adds on top of the resident weights
    # (the weights are the same known bytes in both and would hide a poor estimate).
    under = [(b.measured_peak_bytes - b.predicted["weights"] - b.predicted["other_weights"])
             / (b.predicted["total"] - b.predicted["weights"] - b.predicted["other_weights"])
             for x in adaptive_runs for b in x.batches]
    return [{
        "scenario": "scheduler",
        "model": "gpt small d256 L4 + gpt large d384 L6",
        "label": f"{n_requests} requests, prompts {list(PROMPTS)}, 4..{max_new} new tokens",
        "torch_threads": threads,
        "budget_bytes": budget,
        "requests": n_requests,
        "generated_tokens": adaptive_runs[0].generated_tokens,
        "measured_peak_bytes": ours["measured_peak_bytes"],
        "predicted_peak_bytes": ours["predicted_peak_bytes"],
        "over_budget_batches": ours["over_budget_batches"],
        "tokens_per_s": ours["tokens_per_s"],
        "scheduler": ours,
        "models": adaptive_runs[0].models,
        "baseline": {"fixed_batch": {"batch": fixed, **base}},
        "ratios": {
            "throughput_vs_fixed_batch": ours["tokens_per_s"] / base["tokens_per_s"],
            "peak_over_budget": ours["measured_peak_bytes"] / budget,
            "max_measured_over_predicted_batch_bytes": max(under),
        },
        "measurement": "track_memory('cpu') per batch + the models' resident weights; "
                       "median throughput over interleaved runs",
    }]


if __name__ == "__main__":
    from memscale.bench.records import scenario_main

    raise SystemExit(scenario_main(run))
