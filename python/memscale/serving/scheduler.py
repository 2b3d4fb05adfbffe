"""``memscale.ContinuousScheduler``: iteration-level batching of Hugging Face causal LMs
under one memory budget.

Every iteration the engine (``_C.serving_decide``, ``include/memscale/core/rules/serving.hpp``)
looks at the running, preempted and waiting requests and says which to preempt (swap the
KV cache to the next tier, or drop it and recompute it, whichever costs less), which to
resume and which to admit, each with a rule id and a reason; this module applies that,
then runs one step of every model's batch (:class:`memscale.serving.batch.PackedBatch`: one
forward of the running rows' next tokens and the joining rows' prefills).
A request leaves the batch the step it finishes; greedy outputs are those of the request
generated alone. Every iteration is measured with ``memscale.track_memory``: the report
gives the measured peak next to the engine's projection.

Example:
    >>> import torch, memscale
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                                      num_attention_heads=4, vocab_size=100)).eval()
    >>> sched = memscale.ContinuousScheduler("64MB")
    >>> _ = sched.add_model("llama", model)
    >>> reqs = [sched.submit("llama", torch.arange(1, 1 + n), max_new_tokens=n) for n in (3, 7)]
    >>> report = sched.run()
    >>> report.completed, report.over_budget_iterations, [len(r.generated) for r in reqs]
    (2, 0, [3, 7])
"""
from __future__ import annotations

import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import psutil
import torch
from torch import nn

from .. import _C
from ..errors import ConfigError, InfeasibleBudgetError
from ..hardware import detect_hardware
from ..memory import track_memory
from ..profiler.introspect import model_dims
from ..runtime.inference.heap import pin_mmap_threshold, release_freed_memory
from ..runtime.inference.hf_cache import cache_layers
from ..runtime.inference.kv_cache import ScratchDir
from ..runtime.inference.memory_model import ModelMemory
from ..scheduler import _budget_bytes, check_request, model_memory
from .batch import PackedBatch, forward_kwargs
from .report import ServingReport
from .swap import SwappedKV

log = logging.getLogger("memscale")


@dataclass(eq=False)
class ServingRequest:
    """One request; ``generated`` grows token by token, ``tokens`` is prompt + generated."""

    id: int
    model: str
    prompt: torch.Tensor
    max_new_tokens: int
    submitted_at: float
    generated: list[int] = field(default_factory=list)
    length: int = 0                 # tokens in its KV cache (prompt + generated - 1 while running)
    swapped: SwappedKV | None = None
    dropped: bool = False
    preemptions: int = 0
    first_token_at: float | None = None
    finished_at: float | None = None

    @property
    def next_token(self) -> int:
        return self.generated[-1]

    @property
    def done(self) -> bool:
        return len(self.generated) >= self.max_new_tokens

    @property
    def tokens(self) -> torch.Tensor:
        return torch.cat([self.prompt, torch.tensor(self.generated, dtype=self.prompt.dtype)])

    @property
    def max_tokens(self) -> int:
        return self.prompt.numel() + self.max_new_tokens - 1


def _model_facts(model: nn.Module, mm: ModelMemory) -> Any:
    facts = _C.ServingModel()
    facts.kv_bytes_per_token = mm.kv_bytes_per_token
    facts.layers = cache_layers(model)
    # the calibrated reservation of one token of a step (decode row or prefill token)
    facts.decode_reservation_per_row = mm.activation_bytes(1, 1)
    facts.prefill_reservation_per_token = mm.activation_bytes(1, 1)
    facts.flops_per_token = 2.0 * sum(p.numel() for p in model.parameters())  # dense forward FLOPs
    # a fed token against a cached column: every head's score and its softmax, and the mask
    dims, dtype_bytes = model_dims(model), next(model.parameters()).element_size()
    facts.attention_bytes_per_pair = 2 * max(1, dims.heads) * dtype_bytes + dtype_bytes + 1
    # a cached column of the attending layer: K and V at every query head (repeated for grouped-query attention)
    head_dim = dims.head_dim or dims.hidden // max(1, dims.heads)
    facts.attention_bytes_per_column = 2 * max(1, dims.heads) * head_dim * dtype_bytes
    return facts


class ContinuousScheduler:
    """Continuous batching of greedy generation requests within ``budget``.

    Args:
        budget: bytes or a size string shared by every model added (weights stay resident).
        projection: how admission counts a running request's KV cache: ``"max_length"``
            (its prompt + max_new_tokens: no preemption is ever needed) or ``"next_step"``
            (its length after the next step: more requests at once, preemption when they grow).
        max_batch: rows of one model's batch at most.
        disk_dir: directory of swapped KV caches on a CPU-only machine (default: a private temp dir).
    """

    def __init__(self, budget: int | str, *, projection: str = "max_length", max_batch: int = 256,
                 disk_dir: str | None = None) -> None:
        self.budget_bytes = _budget_bytes(budget)
        if projection not in ("max_length", "next_step"):
            raise ConfigError(f"projection: got {projection!r}, expected 'max_length' or 'next_step'")
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ConfigError(f"max_batch: got {max_batch!r}, expected an integer >= 1")
        self.projection, self.max_batch, self.disk_dir = projection, max_batch, disk_dir
        self.models: dict[str, tuple[nn.Module, ModelMemory, Any]] = {}
        self.batches: dict[str, PackedBatch] = {}
        self.queued: deque[ServingRequest] = deque()   # preempted first, then waiting (FIFO)
        self.done: list[ServingRequest] = []
        self.actions: list[tuple[int, Any]] = []       # (iteration, engine action)
        self._model_index: dict[str, int] = {}
        self._next_id = 0
        self._iteration = 0
        self._scratch: ScratchDir | None = None
        self._hardware: Any = None

    # ---- models and requests -------------------------------------------------------------
    def add_model(self, name: str, model: nn.Module, memory: ModelMemory | None = None, **calibration: Any) -> ModelMemory:
        """Registers a causal LM under ``name``; its memory figures are calibrated unless given."""
        forward_kwargs(model)
        memory = model_memory(self.models, self.weight_bytes, self.budget_bytes, name, model, memory, calibration)
        self.models[name] = (model, memory, _model_facts(model, memory))
        self.batches[name] = PackedBatch(model)
        self._model_index = {n: i for i, n in enumerate(self.models)}
        if self._hardware is None:
            self._hardware = detect_hardware(self.disk_dir, device=next(model.parameters()).device)
        return memory

    @property
    def weight_bytes(self) -> int:
        return sum(m.weight_bytes for _, m, _ in self.models.values())

    def submit(self, model: str, prompt: torch.Tensor, max_new_tokens: int) -> ServingRequest:
        """Queues a request; InfeasibleBudgetError when it could not run even alone."""
        check_request(self.models, model, prompt, max_new_tokens)
        request = ServingRequest(self._next_id, model, prompt.detach().cpu(), max_new_tokens, time.perf_counter())
        need = _C.serving_alone_bytes(self._state(), self._engine_request(request))
        if need > self.budget_bytes:
            raise InfeasibleBudgetError(
                f"request for {model!r} (prompt {prompt.numel()}, {max_new_tokens} new tokens) needs {need} bytes "
                f"alone, over the budget of {self.budget_bytes}", need)
        self._next_id += 1
        self.queued.append(request)
        return request

    # ---- the engine's view ---------------------------------------------------------------
    def _engine_request(self, r: ServingRequest, running: bool = False) -> Any:
        e = _C.ServingRequest()
        e.id, e.model = r.id, self._model_index[r.model]
        e.tokens = r.length if (running or r.swapped is not None) else 0
        e.prefill_tokens = r.prompt.numel() + len(r.generated)
        e.max_tokens, e.swapped, e.dropped = r.max_tokens, r.swapped is not None, r.dropped
        return e

    def _state(self) -> Any:
        s = _C.ServingState()
        s.budget_bytes, s.weight_bytes = self.budget_bytes, self.weight_bytes
        s.projection, s.max_batch = self.projection, self.max_batch
        s.models = [facts for _, _, facts in self.models.values()]
        s.running = [self._engine_request(r, True) for b in self.batches.values() for r in b.rows]
        s.queued = [self._engine_request(r) for r in self.queued]
        return s

    # ---- applying decisions --------------------------------------------------------------
    def _find_running(self, rid: int) -> ServingRequest:
        return next(r for b in self.batches.values() for r in b.rows if r.id == rid)

    def _preempt(self, r: ServingRequest, swap: bool, front: list[ServingRequest]) -> None:
        batch = self.batches[r.model]
        if swap:
            if self._scratch is None and batch.device.type != "cuda":
                self._scratch = ScratchDir(self.disk_dir, 0)
            r.swapped = SwappedKV(batch.row_kv(r), batch.device, self._scratch, f"{id(self)}-{r.id}-{r.preemptions}")
        else:
            r.dropped = True
        batch.remove([r])
        if not swap:
            r.length = 0
        r.preemptions += 1
        front.append(r)

    def _apply(self, decision: Any) -> None:
        """Applies the engine's actions in order: preemptions, then read-backs and joins (the
        joining rows' prefills run in the iteration's step, beside the running rows)."""
        front: list[ServingRequest] = []
        by_id = {r.id: r for r in self.queued}
        joined: set[int] = set()
        for a in decision.actions:
            self.actions.append((self._iteration, a))
            if a.action in ("preempt_swap", "preempt_recompute"):
                self._preempt(self._find_running(a.id), a.action == "preempt_swap", front)
            elif a.action == "resume_swap":
                r = by_id[a.id]
                kv = r.swapped.restore()
                r.swapped = None
                self.batches[r.model].join_cached(r, kv)
                joined.add(r.id)
            elif a.action in ("admit", "resume_recompute"):
                r = by_id[a.id]
                # a new request feeds its prompt, a dropped one its prompt and all it generated
                self.batches[r.model].add(r, r.tokens if r.dropped else r.prompt)
                r.dropped = False
                joined.add(r.id)
        if joined:
            self.queued = deque(r for r in self.queued if r.id not in joined)
        # preempted requests go first, the earliest preempted (the last in the list) first
        self.queued.extendleft(front)

    def _finish(self) -> int:
        """Removes the finished rows; returns how many finished."""
        now, finished = time.perf_counter(), 0
        for batch in self.batches.values():
            done = [r for r in batch.rows if r.done]
            if done:
                batch.remove(done)
            for r in done:
                r.finished_at = now
                self.done.append(r)
                finished += 1
        return finished

    def step(self, tracker: Any = None) -> tuple[int, int]:
        """One iteration: the engine's actions, then one step of every batch.
        Returns (the engine's projected peak, the measured peak: weights + tracked bytes)."""
        if tracker is not None:
            tracker.reset_peak()
        decision = _C.serving_decide(self._state(), self._hardware)
        self._apply(decision)
        for batch in self.batches.values():
            if batch.rows or batch.joining:
                for r, token in zip(batch.rows, batch.step()):
                    r.generated.append(token)
                    r.length = r.prompt.numel() + len(r.generated) - 1
                    if r.first_token_at is None:
                        r.first_token_at = time.perf_counter()
        self._finish()
        self._iteration += 1
        measured = self.weight_bytes + tracker.peak_bytes if tracker is not None else 0
        return decision.projected_bytes, measured

    def pending(self) -> bool:
        return bool(self.queued) or any(b.rows for b in self.batches.values())

    def run(self) -> ServingReport:
        """Runs until every request is done; measures every iteration's peak."""
        devices = {next(m.parameters()).device for m, _, _ in self.models.values()}
        device = next(iter(devices)) if devices else torch.device("cpu")
        first_done, first_action, iterations = len(self.done), len(self.actions), 0
        measured = projected = over = rss_growth = 0
        process = psutil.Process()
        # glibc: tensors freed by the steps would otherwise stay resident in the heap
        # (docs/offload.md, "resident set"); the baseline is then what the process holds
        pin_mmap_threshold()
        release_freed_memory()
        rss_start = process.memory_info().rss
        start = time.perf_counter()
        with torch.no_grad(), track_memory(device) as tracker:
            while self.pending():
                p, m = self.step(tracker)
                projected, measured = max(projected, p), max(measured, m)
                over += m > self.budget_bytes
                growth = process.memory_info().rss - rss_start
                rss_growth = max(rss_growth, growth)
                if self.weight_bytes + growth > self.budget_bytes:
                    release_freed_memory()  # the sample stands; the heap's free pages go back for the next
                iterations += 1
        wall = time.perf_counter() - start
        if self._scratch is not None:
            self._scratch.close()
            self._scratch = None
        finished = self.done[first_done:]
        actions = [a for _, a in self.actions[first_action:]]
        rules = dict(sorted(Counter(a.rule for a in actions).items()))
        report = ServingReport(self.budget_bytes, len(finished), sum(len(r.generated) for r in finished), wall,
                               iterations, measured, projected, over, rules,
                               [r.finished_at - r.submitted_at for r in finished],
                               [a.reason for a in actions if a.action.startswith("preempt")][:5],
                               self.weight_bytes + rss_growth)
        log.info("continuous scheduler: %d requests in %d iterations, %.1f tokens/s, peak %d of budget %d bytes, "
                 "%d preemptions", report.completed, iterations, report.tokens_per_second, measured,
                 self.budget_bytes, report.preemptions)
        return report
