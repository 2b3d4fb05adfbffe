"""Training budget sweep: a GPT-style model trained under budgets of 80%, 60%,
45%, 35% and 25% of its measured unoptimized peak. At each budget MemScale's measured peak
(counting allocator on the CPU, the caching allocator's statistics on CUDA) must stay
within 1.05 x budget, or the engine refuses with InfeasibleBudgetError and its
min_budget_bytes is then shown to fit. The same run measures no optimization and
checkpoint-every-block (torch.utils.checkpoint) as peers. On CUDA the model is larger
(a step of a few hundred milliseconds on a datacenter GPU) and times are synchronized.

MemScale wraps with the user's AdamW and ``offload_optimizer=True``, so below the static
floor the engine may keep the optimizer state and gradients on the next tier and page single
layers' weights (issue 16; the loop steps ``memscale.optimizer_for(model)``). Each record
says whether its losses and parameters after the measured steps equal the unoptimized run's
(``ratios.loss_max_rel_diff``, ``ratios.param_max_rel_diff``: the largest difference over
the largest magnitude, per tensor), the tier traffic and the share of its read time the
prefetch hid (``tier_io``), and the resident-set rise over the tensor peak (``rss``).

Peaks: each configuration is built inside its own ``memscale.track_memory(device)`` scope
(weights, gradients and optimizer state counted) and runs a few steps there. Step times:
all configurations stay alive and are then timed together by ``memscale.bench.timing``
(interleaved rounds, fixed torch threads, medians, paired per-round ratios), so machine
load on a shared CPU falls on every configuration alike; the record's ``timing`` says how.

    python -m memscale.bench.scenarios.training_sweep [--quick] [--out FILE] [--device auto|cpu|cuda]
"""
from __future__ import annotations

import functools
import gc
import logging
import tempfile
from typing import Any, Callable

import torch
from torch.utils.checkpoint import checkpoint

from memscale.api import optimizer_for, plan_of, unwrap, wrap
from memscale.runtime import hooks

from memscale.config import Config

from memscale.errors import InfeasibleBudgetError, MemScaleError

from memscale.memory import track_memory
from memscale.testing import models
from memscale.timeline import timeline_of
from memscale.bench.device import fresh_device_state
from memscale.bench.timing import fixed_threads, interleave
from memscale.bench.scenarios._offload_rss import proc_status, reset_peak_rss

log = logging.getLogger("memscale")

FRACTIONS = (0.80, 0.60, 0.45, 0.35, 0.25)
FULL = dict(d_model=384, n_layers=6, n_heads=8, d_ff=1536, max_seq=256, vocab=8192, batch=8)
QUICK = dict(d_model=256, n_layers=4, n_heads=8, d_ff=1024, max_seq=128, vocab=4096, batch=4)
CUDA_FULL = dict(d_model=1024, n_layers=12, n_heads=16, d_ff=4096, max_seq=1024, vocab=32000, batch=8)
CUDA_QUICK = dict(d_model=512, n_layers=6, n_heads=8, d_ff=2048, max_seq=512, vocab=16000, batch=8)
#: Steps inside the tracking scope: the first allocates the optimizer state, then steady ones.
PEAK_STEPS = 3
#: (timed rounds, warm-up rounds) of the interleaved timing; quick steps are short.
ROUNDS = {True: (15, 2), False: (9, 1)}


def _build(sizes: dict[str, int], device: torch.device) -> tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    dims = {k: v for k, v in sizes.items() if k != "batch"}
    model = models.build("gpt", seed=0, **dims).to(device)
    ids, labels = models.example_inputs("gpt", model, batch=sizes["batch"], seq=sizes["max_seq"])
    return model, (ids.to(device), labels.to(device))


def _checkpoint_every_block(model: torch.nn.Module) -> None:
    """The peer: torch.utils.checkpoint on every repeated block, as users write it by hand."""
    for block in model.blocks:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def _train(sizes: dict[str, int], steps: int, prepare: Callable[[torch.nn.Module, tuple, Any], Any],
           device: torch.device) -> dict[str, Any]:
    """Builds the model inside the tracking scope (so weights, grads and optimizer state
    are counted), runs `steps` AdamW steps and returns the peak, the losses, the parameters
    after them and `step`, a callable running one more step of the same model (for the
    interleaved timing). The resident set's rise (VmHWM over VmRSS at the start) is recorded
    beside the tensor peak: on the CPU it also counts what is not a tensor (read buffers,
    mappings, the heap's slack)."""
    gc.collect()
    fresh_device_state(device)
    rss_start = proc_status() if device.type == "cpu" else {}
    if rss_start:
        reset_peak_rss()
    with track_memory(device) as tracker:
        model, (ids, labels) = _build(sizes, device)
        optimizer: Any = torch.optim.AdamW(model.parameters(), lr=1e-3)
        prepared = prepare(model, (ids, labels), optimizer)
        if prepared is not None:
            optimizer = optimizer_for(model)

        def step() -> float:
            optimizer.zero_grad(set_to_none=True)
            loss = model(ids, labels=labels)
            loss.backward()
            optimizer.step()
            return float(loss.detach())

        losses = [step() for _ in range(steps)]
        peak = tracker.peak_bytes
    rss = {}
    if rss_start:
        now = proc_status()
        rss = {"rss_peak_rise_bytes": now["VmHWM"] - rss_start["VmRSS"],
               "rss_above_tensor_peak_bytes": now["VmHWM"] - rss_start["VmRSS"] - int(peak)}
    params = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()}
    return {"peak_bytes": int(peak), "losses": losses, "params": params, "prepared": prepared, "step": step,
            "model": model, "optimizer": optimizer, "rss": rss}


def _memscale_prepare(budget: int, disk_dir: str) -> Callable[[torch.nn.Module, tuple, Any], Any]:
    def prepare(model: torch.nn.Module, inputs: tuple, optimizer: Any) -> Any:
        wrap(model, Config(memory_budget=int(budget), offload={"disk_dir": disk_dir}), example_inputs=inputs,
             training=True, optimizer=optimizer, offload_optimizer=True)
        return plan_of(model)
    return prepare


def _max_rel_diff(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    """Largest |got - ref| over the largest |ref| of each tensor (0: bit-identical)."""
    worst = 0.0
    for name, r in ref.items():
        scale = float(r.abs().max()) or 1.0
        worst = max(worst, float((got[name] - r).abs().max()) / scale)
    return worst


def _tier_io(run: dict[str, Any]) -> dict[str, Any]:
    """Tier traffic of a wrapped run so far: the weight pager's loads (and the home copies
    the step wrote) and the offloaded optimizer's reads and writes; ``hidden_read_fraction``
    is the share of read time nothing waited for (the prefetch hid it)."""
    handle = hooks.handle_of(run["model"])
    pager = getattr(getattr(handle, "applied", None), "pager", None)
    opt = run["optimizer"]
    out: dict[str, Any] = {}
    read_s = wait_s = 0.0
    if pager is not None:
        stats = pager.stats()
        out["weights"] = stats
        read_s += stats["load_seconds"]
        wait_s += stats["acquire_wait_seconds"]
    if hasattr(opt, "io_stats"):
        stats = opt.io_stats()
        out["optimizer"] = stats
        read_s += stats["read_seconds"]
        wait_s += stats["read_wait_seconds"]
    if read_s > 0:
        out["read_seconds"] = read_s
        out["read_wait_seconds"] = wait_s
        out["hidden_read_fraction"] = max(0.0, 1.0 - wait_s / read_s)
    return out


def _timeline(sizes: dict[str, int], budget: int, device: torch.device) -> dict[str, Any]:
    """The step timeline of the plan at ``budget`` (memscale.timeline_of), on a fresh model
    outside the measured runs: predicted before and after the plan, and one measured step."""
    model, inputs = _build(sizes, device)
    with tempfile.TemporaryDirectory(prefix="memscale-sweep-") as disk_dir:
        _memscale_prepare(budget, disk_dir)(model, inputs, torch.optim.AdamW(model.parameters(), lr=1e-3))
        try:
            return timeline_of(model, inputs)
        finally:
            unwrap(model)


def run(quick: bool, device: torch.device = torch.device("cpu")) -> list[dict[str, Any]]:
    if device.type == "cuda":
        sizes = CUDA_QUICK if quick else CUDA_FULL
    else:
        sizes = QUICK if quick else FULL
    rounds, warmup = ROUNDS[quick]
    with fixed_threads():
        return _sweep(sizes, rounds, warmup, device)


def _sweep(sizes: dict[str, int], rounds: int, warmup: int, device: torch.device) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    disk = tempfile.TemporaryDirectory(prefix="memscale-sweep-")  # home copies and state of the wrapped runs
    runs = {"unoptimized": _train(sizes, PEAK_STEPS, lambda m, i, o: None, device),
            "checkpoint_every_block": _train(sizes, PEAK_STEPS, lambda m, i, o: _checkpoint_every_block(m), device)}
    base, ckpt = runs["unoptimized"], runs["checkpoint_every_block"]
    model_name = "gpt d{d_model} L{n_layers} seq{max_seq} b{batch} V{vocab}".format(**sizes)
    records = []
    by_budget: dict[int, str] = {}  # a refused budget runs at min_budget_bytes: same plan, measured once
    for fraction in FRACTIONS:
        label = f"{round(fraction * 100)}%"
        budget = int(base["peak_bytes"] * fraction)
        record: dict[str, Any] = {
            "scenario": "training_sweep", "model": model_name, "label": label,
            "budget_fraction": fraction, "budget_bytes": budget,
        }
        try:
            got = _train(sizes, PEAK_STEPS, _memscale_prepare(budget, disk.name), device)
            measured_budget = budget
        except InfeasibleBudgetError as refusal:
            # The engine's promise: the smallest budget it names must itself fit.
            record["refused"] = True
            record["refusal"] = str(refusal).splitlines()[0]
            record["min_budget_bytes"] = refusal.min_budget_bytes
            measured_budget = refusal.min_budget_bytes
            got = None if measured_budget in by_budget else _train(
                sizes, PEAK_STEPS, _memscale_prepare(measured_budget, disk.name), device)
        owner = by_budget.setdefault(measured_budget, label)
        if owner != label:
            record["same_run_as"] = owner
        runs.setdefault(owner, got)
        record["measured_against_bytes"] = measured_budget
        records.append(record)

    timing = interleave({name: r["step"] for name, r in runs.items()}, rounds=rounds, warmup=warmup,
                        device=device)
    log.info("unoptimized peak %.1f MiB, %.3f s/step; checkpoint-every-block peak %.1f MiB, %.3f s/step "
             "(median of %d interleaved rounds, %d torch thread(s))", base["peak_bytes"] / 2**20,
             timing.median("unoptimized"), ckpt["peak_bytes"] / 2**20,
             timing.median("checkpoint_every_block"), rounds, timing.threads)
    peers = {
        "unoptimized": {"peak_bytes": base["peak_bytes"], "step_time_s": timing.median("unoptimized"),
                        "times_s": timing.times_s["unoptimized"]},
        "checkpoint_every_block": {"peak_bytes": ckpt["peak_bytes"],
                                   "step_time_s": timing.median("checkpoint_every_block"),
                                   "times_s": timing.times_s["checkpoint_every_block"],
                                   "time_vs_unoptimized": timing.ratio("checkpoint_every_block", "unoptimized")},
    }
    timelines: dict[int, dict[str, Any]] = {}
    for record in records:
        name = record.get("same_run_as", record["label"])
        got, budget, measured_budget = runs[name], record["budget_bytes"], record["measured_against_bytes"]
        plan = got["prepared"]
        record.update({
            "peers": {**peers, "checkpoint_every_block": {**peers["checkpoint_every_block"],
                                                          "fits_budget": ckpt["peak_bytes"] <= budget}},
            "refused": record.get("refused", False),
            "measured_peak_bytes": got["peak_bytes"],
            "predicted_peak_bytes": int(plan.predicted_peak_bytes),
            "step_time_s": timing.median(name),
            "times_s": timing.times_s[name],
            "timing": timing.method(),
            "measurement": f"track_memory('{device.type}') peak over {PEAK_STEPS} AdamW steps "
                           "with the model built inside the scope",
            "losses": got["losses"],
            "techniques": {l.name: list(l.techniques) for l in plan.layers if l.techniques},
            "plan": plan.to_json(),
        })
        ratios = {"peak_over_budget": got["peak_bytes"] / measured_budget,
                  "time_vs_unoptimized": timing.ratio(name, "unoptimized"),
                  "step_time_vs_checkpoint_every_block": timing.ratio(name, "checkpoint_every_block"),
                  "predicted_over_measured": plan.predicted_peak_bytes / got["peak_bytes"],
                  "planned_at_budget": 0.0 if record["refused"] else 1.0,
                  "loss_max_rel_diff": max(abs(a - b) / abs(b) for a, b in zip(got["losses"], base["losses"])),
                  "param_max_rel_diff": _max_rel_diff(got["params"], base["params"])}
        if ckpt["peak_bytes"] <= budget:
            ratios["time_vs_checkpoint_every_block"] = timing.ratio(name, "checkpoint_every_block")
        record["ratios"] = ratios
        record["rss"] = got["rss"]
        record["tier_io"] = _tier_io(got)
        offload = plan.optimizer_offload
        record["optimizer_offload"] = {"kinds": offload.kinds, "rule": offload.rule} if offload.kinds else None
        record["paged_layers"] = [l.name for l in plan.layers if l.has("offload_weights")]
        if measured_budget not in timelines:
            try:
                timelines[measured_budget] = _timeline(sizes, measured_budget, device)
            except MemScaleError as e:  # the timeline does not model optimizer offload yet
                timelines[measured_budget] = None
                record["timeline_unavailable"] = str(e)
        record["timeline"] = timelines[measured_budget]
        log.info("budget %s: peak %.1f MiB (%.3f x), %.3f s/step, %.3f x unoptimized%s", record["label"],
                 got["peak_bytes"] / 2**20, ratios["peak_over_budget"], record["step_time_s"],
                 ratios["time_vs_unoptimized"], " (refused, ran at min budget)" if record["refused"] else "")
    for r in runs.values():
        if r is not None and r["prepared"] is not None:
            unwrap(r["model"])  # state back, files removed
    disk.cleanup()
    return records


if __name__ == "__main__":
    from memscale.bench.records import scenario_main

    raise SystemExit(scenario_main(run))
