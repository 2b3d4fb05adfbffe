"""Training steps of a reference model under DDP or FSDP2, one rank each (run by
:func:`memscale.testing.distributed.run_ranks`): what the distributed tests and the
``distributed`` benchmark measure.

:func:`rank_step` builds the same seeded model on every rank, puts it under the engine
(``fully_shard`` per block then the root, or ``DistributedDataParallel``), optionally wraps
it with memscale (or checkpoints every block with ``torch.utils.checkpoint``, the baseline),
and runs AdamW steps on this rank's slice of one global batch. It returns the per-rank
prediction, the measured per-rank peak (the counting allocator's peak over a scope opened
before the model was built: everything the run holds, DDP's buckets included, plus the step), step times and, on request, the full gradients after
the first backward.

The counting allocator is installed before the model is built: FSDP2 frees and
re-allocates its unsharded parameters with ``untyped_storage().resize_()``, which allocates
through the allocator the storage was created with, so only storages created under the
counting allocator are seen when they are gathered again.
"""
from __future__ import annotations

import contextlib
import gc
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..api import plan_of, unwrap, wrap
from ..memory import track_memory
from ..planning import plan
from ..profiler.profile import profile
from . import models


@dataclass(frozen=True)
class RankSpec:
    """One distributed run: model, engine, per-rank batch, what memscale does."""

    engine: str = "fsdp2"  # fsdp2 | ddp
    model: str = "gpt"
    overrides: dict[str, Any] = field(default_factory=dict)
    batch: int = 2  # per rank
    seq: int = 32
    budget: int | str | None = None  # memscale.wrap at this budget (None: not wrapped)
    budget_by_rank: dict[int, int] | None = None  # a different budget on some ranks
    budget_fraction: float | None = None  # wrap at this fraction of the predicted unoptimized peak
    checkpoint_blocks: bool = False  # the baseline: torch.utils.checkpoint on every block
    steps: int = 3  # the last one is measured
    timed_steps: int = 0  # extra steps timed after the measured one
    grads: bool = False  # return the full gradients after the first backward
    predict: bool = False  # return memscale's per-rank unoptimized prediction


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks: children of the model's ModuleLists."""
    return [b for m in model.modules() if isinstance(m, nn.ModuleList) for b in m]


def shard(model: nn.Module, engine: str) -> nn.Module:
    """``model`` under ``engine``: FSDP2 per block then the root (returns the root), or DDP."""
    if engine == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for block in blocks_of(model):
            fully_shard(block)
        fully_shard(model)
        return model
    if engine == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    raise ValueError(f"engine must be 'fsdp2' or 'ddp', got {engine!r}")


def checkpoint_every_block(model: nn.Module) -> None:
    """The baseline: every block's forward under non-reentrant ``torch.utils.checkpoint``."""
    for block in blocks_of(model):
        forward = block.forward
        block.forward = lambda *a, _f=forward, **k: checkpoint(_f, *a, use_reentrant=False, **k)


def full_grads(model: nn.Module) -> dict[str, np.ndarray]:
    """Every parameter's gradient at full size (FSDP2 shards all-gathered by DTensor), as
    numpy copies: kept outside the counting allocator, the harness's copies are not counted
    in the peak of the run's later steps."""
    out = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            out[name.removeprefix("module.")] = g.detach().numpy().copy()
            del g
    return out


def global_batch(spec: RankSpec, model: nn.Module, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids, labels = models.example_inputs(spec.model, model, batch=spec.batch * world, seq=spec.seq, seed=1)
    return ids, labels


def rank_step(rank: int, world: int, spec: RankSpec) -> dict[str, Any]:
    """One rank of ``spec`` (see the module docstring); ``world == 1`` with no process
    group runs the single-process reference on the whole global batch."""
    with track_memory("cpu") as held:  # storages created under the counting allocator (module docstring)
        return _rank_step(rank, world, spec, held)


def _rank_step(rank: int, world: int, spec: RankSpec, held: Any) -> dict[str, Any]:
    model = models.build(spec.model, seed=0, **spec.overrides)
    ids, labels = global_batch(spec, model, world)
    distributed = torch.distributed.is_initialized()
    if distributed:
        ids, labels = ids.chunk(world)[rank].contiguous(), labels.chunk(world)[rank].contiguous()
        model = shard(model, spec.engine)
    inputs = (ids, labels)
    out: dict[str, Any] = {"rank": rank}
    if spec.predict or spec.budget_fraction is not None:
        graph = profile(model, inputs)
        out["predicted_unoptimized"] = plan(graph, mode="off", memory_budget=1 << 40).unoptimized_peak_bytes
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    budget = (spec.budget_by_rank or {}).get(rank, spec.budget)
    if spec.budget_fraction is not None:
        budget = int(spec.budget_fraction * out["predicted_unoptimized"])
    if budget is not None:
        wrap(model, memory_budget=budget, example_inputs=inputs, optimizer=opt)
        applied = plan_of(model)
        out["budget"] = applied.budget_bytes
        out["predicted"] = applied.predicted_peak_bytes
        out["techniques"] = {layer.name: list(layer.techniques) for layer in applied.layers if layer.techniques}
    if spec.checkpoint_blocks:
        checkpoint_every_block(model.module if hasattr(model, "module") else model)

    def step(i: int) -> None:
        opt.zero_grad(set_to_none=True)
        loss = model(*inputs)
        loss.backward()
        if i == 0 and spec.grads:
            out["grads"] = full_grads(model)
            out["loss"] = float(loss.detach())
        del loss
        opt.step()

    for i in range(spec.steps - 1):
        step(i)
    opt.zero_grad(set_to_none=True)
    gc.collect()
    # `held` opened before the model was built: its current bytes are everything this run
    # holds (shards or replica, DDP's gradient buckets, optimizer state, batch, what
    # memscale keeps), and its peak from here adds the step's.
    held.reset_peak()
    step(spec.steps - 1)
    out["measured"] = held.peak_bytes
    times = []
    for i in range(spec.timed_steps):
        if distributed:
            torch.distributed.barrier()
        start = time.perf_counter()
        step(spec.steps + i)
        times.append(time.perf_counter() - start)
    out["step_times"] = times
    with contextlib.suppress(Exception):
        unwrap(model)
    return out


def run_specs(rank: int, world: int, specs: list[RankSpec]) -> list[dict[str, Any]]:
    """:func:`rank_step` for each spec in turn (one spawn serves several runs); a run that
    raised gives ``{"error": message}``."""
    results = []
    for spec in specs:
        try:
            results.append(rank_step(rank, world, spec))
        except Exception as error:  # noqa: BLE001 -- reported to the test, which checks it
            results.append({"rank": rank, "error": f"{type(error).__name__}: {error}"})
    return results
