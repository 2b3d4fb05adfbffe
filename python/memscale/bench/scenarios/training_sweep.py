"""Training budget sweep (issue 6): a GPT-style model trained under budgets of 80%, 60%,
45% and 35% of its measured unoptimized peak. At each budget MemScale's measured peak
(counting allocator on the CPU, the caching allocator's statistics on CUDA) must stay
within 1.05 x budget, or the engine refuses with InfeasibleBudgetError and its
min_budget_bytes is then shown to fit. The same run measures no optimization and
checkpoint-every-block (torch.utils.checkpoint) as peers. On CUDA the model is larger
(a step of a few hundred milliseconds on a datacenter GPU) and times are synchronized.

    python -m memscale.bench.scenarios.training_sweep [--quick] [--out FILE] [--device auto|cpu|cuda]
"""
from __future__ import annotations

import functools
import gc
import logging
from typing import Any, Callable

import torch
from torch.utils.checkpoint import checkpoint

import memscale
from memscale import models
from memscale.bench.device import clock, fresh_device_state

log = logging.getLogger("memscale")

FRACTIONS = (0.80, 0.60, 0.45, 0.35)
FULL = dict(d_model=384, n_layers=6, n_heads=8, d_ff=1536, max_seq=256, vocab=8192, batch=8)
QUICK = dict(d_model=256, n_layers=4, n_heads=8, d_ff=1024, max_seq=128, vocab=4096, batch=4)
CUDA_FULL = dict(d_model=1024, n_layers=12, n_heads=16, d_ff=4096, max_seq=1024, vocab=32000, batch=8)
CUDA_QUICK = dict(d_model=512, n_layers=6, n_heads=8, d_ff=2048, max_seq=512, vocab=16000, batch=8)


def _build(sizes: dict[str, int], device: torch.device) -> tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    dims = {k: v for k, v in sizes.items() if k != "batch"}
    model = models.build("gpt", seed=0, **dims).to(device)
    ids, labels = models.example_inputs("gpt", model, batch=sizes["batch"], seq=sizes["max_seq"])
    return model, (ids.to(device), labels.to(device))


def _checkpoint_every_block(model: torch.nn.Module) -> None:
    """The peer: torch.utils.checkpoint on every repeated block, as users write it by hand."""
    for block in model.blocks:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def _train(sizes: dict[str, int], steps: int, prepare: Callable[[torch.nn.Module, tuple], Any],
           device: torch.device) -> dict[str, Any]:
    """Builds the model inside the tracking scope (so weights, grads and optimizer state
    are counted), runs `steps` AdamW steps and returns the peak, step time and losses."""
    gc.collect()
    fresh_device_state(device)
    with memscale.track_memory(device) as tracker:
        model, (ids, labels) = _build(sizes, device)
        prepared = prepare(model, (ids, labels))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        times, losses = [], []
        for _ in range(steps):
            start = clock(device)
            loss = model(ids, labels=labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(clock(device) - start)
            losses.append(float(loss))
        peak = tracker.peak_bytes
        del model, optimizer, loss
    # The first step allocates optimizer state and warms caches: time the others.
    return {"peak_bytes": int(peak), "step_time_s": min(times[1:]), "losses": losses, "prepared": prepared}


def _memscale_prepare(budget: int) -> Callable[[torch.nn.Module, tuple], Any]:
    def prepare(model: torch.nn.Module, inputs: tuple) -> Any:
        memscale.wrap(model, memscale.Config(memory_budget=int(budget)), example_inputs=inputs,
                      training=True, optimizer="adamw")
        return memscale.plan_of(model)
    return prepare


def run(quick: bool, device: torch.device = torch.device("cpu")) -> list[dict[str, Any]]:
    if device.type == "cuda":
        sizes = CUDA_QUICK if quick else CUDA_FULL
    else:
        sizes = QUICK if quick else FULL
    steps = 3 if quick else 4
    torch.manual_seed(0)
    base = _train(sizes, steps, lambda m, i: None, device)
    ckpt = _train(sizes, steps, lambda m, i: _checkpoint_every_block(m), device)
    log.info("unoptimized peak %.1f MiB, %.3f s/step; checkpoint-every-block peak %.1f MiB, %.3f s/step",
             base["peak_bytes"] / 2**20, base["step_time_s"], ckpt["peak_bytes"] / 2**20, ckpt["step_time_s"])
    model_name = "gpt d{d_model} L{n_layers} seq{max_seq} b{batch} V{vocab}".format(**sizes)
    records = []
    for fraction in FRACTIONS:
        budget = int(base["peak_bytes"] * fraction)
        record: dict[str, Any] = {
            "scenario": "training_sweep", "model": model_name, "label": f"{round(fraction * 100)}%",
            "budget_fraction": fraction, "budget_bytes": budget,
            "measurement": (f"memscale.track_memory('{device.type}') peak over {steps} AdamW steps with the model "
                            "built inside the scope; step time = fastest step after the first"),
            "peers": {"unoptimized": {"peak_bytes": base["peak_bytes"], "step_time_s": base["step_time_s"]},
                      "checkpoint_every_block": {"peak_bytes": ckpt["peak_bytes"], "step_time_s": ckpt["step_time_s"],
                                                 "fits_budget": ckpt["peak_bytes"] <= budget}},
        }
        try:
            got = _train(sizes, steps, _memscale_prepare(budget), device)
            measured_budget = budget
        except memscale.InfeasibleBudgetError as refusal:
            # The engine's promise: the smallest budget it names must itself fit.
            record["refused"] = True
            record["refusal"] = str(refusal).splitlines()[0]
            record["min_budget_bytes"] = refusal.min_budget_bytes
            measured_budget = refusal.min_budget_bytes
            got = _train(sizes, steps, _memscale_prepare(measured_budget), device)
        plan = got["prepared"]
        record.update({
            "refused": record.get("refused", False),
            "measured_against_bytes": measured_budget,
            "measured_peak_bytes": got["peak_bytes"],
            "predicted_peak_bytes": int(plan.predicted_peak_bytes),
            "step_time_s": got["step_time_s"],
            "losses": got["losses"],
            "techniques": {l.name: list(l.techniques) for l in plan.layers if l.techniques},
            "plan": plan.to_json(),
        })
        ratios = {"peak_over_budget": got["peak_bytes"] / measured_budget,
                  "time_vs_unoptimized": got["step_time_s"] / base["step_time_s"],
                  "predicted_over_measured": plan.predicted_peak_bytes / got["peak_bytes"]}
        if ckpt["peak_bytes"] <= budget:
            ratios["time_vs_checkpoint_every_block"] = got["step_time_s"] / ckpt["step_time_s"]
        record["ratios"] = ratios
        log.info("budget %s: peak %.1f MiB (%.3f x), %.3f s/step%s", record["label"], got["peak_bytes"] / 2**20,
                 ratios["peak_over_budget"], got["step_time_s"], " (refused, ran at min budget)" if record["refused"] else "")
        records.append(record)
    return records


if __name__ == "__main__":
    from memscale.bench.records import scenario_main

    raise SystemExit(scenario_main(run))
