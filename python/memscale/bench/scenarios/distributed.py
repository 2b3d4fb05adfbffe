"""GPT training under FSDP2 and DDP in 2 gloo processes: memscale at 70%, 60% and 40% of
the per-rank unoptimized peak against FSDP2 / DDP with checkpoint-every-block.

Each rank (``memscale.testing.distributed.run_ranks``) builds one model per variant, the
same seeded weights on every rank, under the engine (``fully_shard`` per block then the
root, or ``DistributedDataParallel``): unoptimized, checkpoint-every-block
(``torch.utils.checkpoint``) and memscale-wrapped at each fraction of the *measured*
unoptimized per-rank peak. Per variant and rank:

* measured peak: the counting allocator's peak over a scope opened before the variant is
  built, so it counts everything the variant holds (this rank's shards or replica, DDP's
  gradient buckets, optimizer state, batch, what memscale keeps) and one step on top, with
  the allocator installed before the models are built (FSDP2 re-allocates its unsharded
  parameters through the allocator their storage was created with; docs/distributed.md);
* step time: the variants interleaved round by round after a warm-up, a barrier before each
  step, medians per variant; ``time_vs_checkpoint_every_block`` is the median of the paired
  per-round ratios, recorded where checkpoint-every-block also fits the budget (its peak
  <= 1.05 x the budget).

Records: one per engine and fraction, with the worst rank's ``peak_over_budget``.
Goals (bench/goals.json): ``peak_over_budget`` <= 1.05; ``time_vs_checkpoint_every_block``
<= 0.90 where both fit. A budget the engine refuses is measured at the ``min_budget_bytes``
it names (``refused`` and ``min_budget_bytes`` in the record; the peak is over that budget),
as the training sweep does. ``--quick``: FSDP2 at 70% and 60% with fewer rounds.

Run: ``python -m memscale.bench.scenarios.distributed [--quick] [--out FILE]``.
"""
from __future__ import annotations

import contextlib
import gc
import statistics
import time
from typing import Any, Iterator

import torch

from memscale.api import plan_of, wrap
from memscale.errors import InfeasibleBudgetError
from memscale.memory import track_memory
from memscale.testing import models
from memscale.testing.distributed import gloo_available, run_ranks
from memscale.testing.distributed_steps import checkpoint_every_block, shard

WORLD = 2
# A GPT-style vocabulary (8192): the head's logits are a real share of the step, as in the
# models users train; per rank, compute and not the collectives dominates a step.
MODEL = dict(n_layers=6, d_model=256, n_heads=4, d_ff=1024, vocab=8192, max_seq=256)
BATCH, SEQ = 4, 256


def _variant(engine: str, world: int, rank: int) -> tuple[Any, Any, tuple[torch.Tensor, torch.Tensor]]:
    model = models.build("gpt", seed=0, **MODEL)
    ids, labels = models.example_inputs("gpt", model, batch=BATCH * world, seq=SEQ, seed=1)
    batch = (ids.chunk(world)[rank].contiguous(), labels.chunk(world)[rank].contiguous())
    model = shard(model, engine)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3), batch


def _step(model: Any, opt: Any, batch: tuple) -> None:
    opt.zero_grad(set_to_none=True)
    model(*batch).backward()
    opt.step()


def _peak(model: Any, opt: Any, batch: tuple, held: Any) -> int:
    """The variant's per-rank peak: ``held`` was opened before the variant was built, so
    its current bytes are everything the variant holds (shards or replica, DDP's gradient
    buckets, optimizer state, batch, what memscale keeps); its peak from here adds a step's."""
    for _ in range(2):  # optimizer state, FSDP2's lazy init, memscale's first-step check
        _step(model, opt, batch)
    opt.zero_grad(set_to_none=True)
    gc.collect()
    held.reset_peak()
    _step(model, opt, batch)
    return held.peak_bytes


@contextlib.contextmanager
def _holding() -> Iterator[Any]:
    gc.collect()  # garbage of the previous variant is not freed inside the next one's scope
    with track_memory("cpu") as held:
        yield held


def _rank(rank: int, world: int, engine: str, fractions: list[float], rounds: int) -> dict[str, Any]:
    with track_memory("cpu"):  # every storage created under the counting allocator
        variants: dict[str, tuple] = {}
        peaks: dict[str, int] = {}
        with _holding() as held:
            variants["unoptimized"] = _variant(engine, world, rank)
            peaks["unoptimized"] = _peak(*variants["unoptimized"], held)
        with _holding() as held:
            baseline = _variant(engine, world, rank)
            checkpoint_every_block(baseline[0].module if engine == "ddp" else baseline[0])
            variants["checkpoint_every_block"] = baseline
            peaks["checkpoint_every_block"] = _peak(*baseline, held)
        budgets, plans = {}, {}
        for f in fractions:
            name = f"memscale_{round(f * 100)}"
            budgets[name] = int(f * peaks["unoptimized"])
            refused_min = None
            with _holding() as held:
                model, opt, batch = _variant(engine, world, rank)
                try:
                    wrap(model, memory_budget=budgets[name], example_inputs=batch, optimizer=opt)
                except InfeasibleBudgetError as refused:
                    # The engine's promise: the smallest budget it names must itself fit; measured there.
                    refused_min = budgets[name] = int(refused.min_budget_bytes)
                    wrap(model, memory_budget=budgets[name], example_inputs=batch, optimizer=opt)
                plan = plan_of(model)
                plans[name] = {"refused_min_budget_bytes": refused_min,
                               "predicted_peak_bytes": plan.predicted_peak_bytes,
                               "unoptimized_peak_bytes": plan.unoptimized_peak_bytes,
                               "techniques": {l.name: list(l.techniques) for l in plan.layers if l.techniques}}
                variants[name] = (model, opt, batch)
                peaks[name] = _peak(model, opt, batch, held)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, variant in variants.items():
                torch.distributed.barrier()
                start = time.perf_counter()
                _step(*variant)
                times[name].append(time.perf_counter() - start)
    return {"peaks": peaks, "budgets": budgets, "plans": plans, "times": times}


def _record(engine: str, fraction: float, ranks: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    name = f"memscale_{round(fraction * 100)}"
    budget = max(r["budgets"][name] for r in ranks)  # the measured-against budget
    mins = [r["plans"][name]["refused_min_budget_bytes"] for r in ranks]
    refusal = {"refused": any(m is not None for m in mins)}
    if refusal["refused"]:
        refusal["min_budget_bytes"] = max(m for m in mins if m is not None)
    over = max(r["peaks"][name] / r["budgets"][name] for r in ranks)
    ckpt_fits = all(r["peaks"]["checkpoint_every_block"] <= 1.05 * r["budgets"][name] for r in ranks)
    times = {v: [statistics.median(step) for step in zip(*(r["times"][v] for r in ranks))]
             for v in ranks[0]["times"]}  # per round: the ranks' median (they ran in lockstep)
    ratios: dict[str, float] = {"peak_over_budget": over}
    if ckpt_fits:
        ratios["time_vs_checkpoint_every_block"] = statistics.median(
            a / b for a, b in zip(times[name], times["checkpoint_every_block"]))
    ratios["time_vs_unoptimized"] = statistics.median(a / b for a, b in zip(times[name], times["unoptimized"]))
    return {
        "scenario": "distributed",
        "model": f"gpt {MODEL['n_layers']} blocks d{MODEL['d_model']}",
        "engine": engine,
        "label": f"{engine} {round(fraction * 100)}%",
        "world_size": WORLD,
        "per_rank_batch": BATCH, "seq": SEQ,
        "budget_fraction": fraction,
        "budget_bytes": budget,
        **refusal,
        "measured_peak_bytes": max(r["peaks"][name] for r in ranks),
        "predicted_peak_bytes": max(r["plans"][name]["predicted_peak_bytes"] for r in ranks),
        "predicted_unoptimized_peak_bytes": ranks[0]["plans"][name]["unoptimized_peak_bytes"],
        "techniques": ranks[0]["plans"][name]["techniques"],
        "step_time_s": statistics.median(times[name]),
        "times_s": times[name],
        "baseline": {v: {"measured_peak_bytes": max(r["peaks"][v] for r in ranks),
                         "step_time_s": statistics.median(times[v])}
                     for v in ("unoptimized", "checkpoint_every_block")},
        "checkpoint_every_block_fits": ckpt_fits,
        "ratios": ratios,
        "rounds": rounds,
        "measurement": "per rank: resident shards/replica + optimizer state + batch + counting-allocator peak of "
                       "one step; times: variants interleaved per round, barrier before each step, medians",
    }


def run(quick: bool) -> list[dict[str, Any]]:
    if not gloo_available():
        raise RuntimeError("the distributed scenario needs torch.distributed with the gloo backend")
    engines = ["fsdp2"] if quick else ["fsdp2", "ddp"]
    # 70%: a budget where checkpoint-every-block also fits, so the time goal has a comparison
    fractions = [0.7, 0.6] if quick else [0.7, 0.6, 0.4]
    rounds = 5 if quick else 15
    records = []
    for engine in engines:
        ranks = run_ranks(_rank, WORLD, (engine, fractions, rounds), timeout=900)
        records += [_record(engine, f, ranks, rounds) for f in fractions]
    return records


if __name__ == "__main__":
    from memscale.bench.records import scenario_main

    raise SystemExit(scenario_main(run))
