"""``memscale.Scheduler``: memory-aware inference scheduling.

Requests (a prompt and a number of tokens to generate) for one or more models that share
one memory budget are queued; each step the scheduler takes the oldest waiting request
and batches with it the waiting requests of the same model and prompt length, as many as
keep

    weights of every model + KV cache of the batch + activation reservation <= budget

(:mod:`memscale.runtime.inference.memory_model`: the engine's activation reservation, its safety
factor fitted to measured probes). What does not
fit waits; a request that cannot fit even alone is refused at ``submit`` with the budget
it would need. Every batch runs under ``memscale.track_memory`` and the report gives the
measured peak next to the prediction, so "never over budget" is a measured claim.

Example:
    >>> import torch, memscale
    >>> from memscale.testing.models import gpt
    >>> sched = memscale.Scheduler("64MB")
    >>> _ = sched.add_model("gpt", gpt.build(n_layers=2).eval())
    >>> for n in (4, 8):
    ...     _ = sched.submit("gpt", torch.randint(0, 512, (16,)), max_new_tokens=n)
    >>> report = sched.run()
    >>> report.completed, report.over_budget_batches
    (2, 0)
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .config import Config
from .memory import track_memory
from .errors import ConfigError, InfeasibleBudgetError
from .runtime.inference.generate import generate
from .runtime.inference.memory_model import ModelMemory, calibrate, describe

log = logging.getLogger("memscale")


@dataclass
class Request:
    """One generation request; ``tokens`` (prompt + generated) is set when it completes."""

    id: int
    model: str
    prompt: torch.Tensor
    max_new_tokens: int
    submitted_at: float
    tokens: torch.Tensor | None = None
    finished_at: float | None = None

    @property
    def prompt_len(self) -> int:
        return int(self.prompt.shape[0])


@dataclass
class BatchRecord:
    """One executed batch: its shape, the predicted and the measured peak (bytes)."""

    model: str
    batch: int
    prompt: int
    new_tokens: int
    useful_tokens: int
    predicted: dict[str, int]
    measured_peak_bytes: int
    seconds: float
    request_ids: list[int] = field(default_factory=list)


@dataclass
class SchedulerReport:
    """Throughput and memory of a run; ``over_budget_batches`` counts measured overruns."""

    budget_bytes: int
    completed: int
    waiting: int
    generated_tokens: int
    wall_seconds: float
    measured_peak_bytes: int
    predicted_peak_bytes: int
    over_budget_batches: int
    batches: list[BatchRecord]
    models: dict[str, dict[str, Any]]

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tokens_per_second"] = self.tokens_per_second
        d["batch_sizes"] = [b.batch for b in self.batches]
        return d


def _budget_bytes(budget: int | str) -> int:
    value = Config(memory_budget=budget).memory_budget
    if not isinstance(value, int):
        raise ConfigError(f"budget: got {budget!r}; the scheduler needs bytes or a size string such as \"2GiB\"")
    return value


def model_memory(models: dict[str, Any], weight_bytes: int, budget_bytes: int, name: str, model: nn.Module,
                 memory: ModelMemory | None, calibration: dict[str, Any]) -> ModelMemory:
    """The memory figures of a model to register (calibrated unless given); ConfigError when
    ``name`` is taken, InfeasibleBudgetError when its weights beside ``weight_bytes`` exceed the budget."""
    if name in models:
        raise ConfigError(f"model name {name!r} is already registered")
    memory = memory if memory is not None else calibrate(model, **calibration)
    weights = weight_bytes + memory.weight_bytes
    if weights > budget_bytes:
        raise InfeasibleBudgetError(
            f"budget {budget_bytes} bytes: the resident weights of the models ({weights} bytes with "
            f"{name!r}) do not fit; wrap {name!r} for offloaded inference or raise the budget", weights)
    return memory


def check_request(models: dict[str, Any], model: str, prompt: Any, max_new_tokens: Any) -> None:
    """ConfigError unless ``model`` is registered, ``prompt`` a non-empty 1-D tensor and
    ``max_new_tokens`` an integer >= 1."""
    if model not in models:
        raise ConfigError(f"model: got {model!r}, registered: {', '.join(sorted(models)) or 'none'}")
    if not isinstance(prompt, torch.Tensor) or prompt.dim() != 1 or prompt.numel() == 0:
        raise ConfigError("prompt: expected a non-empty 1-D tensor of token ids")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens: got {max_new_tokens!r}, expected an integer >= 1")


class Scheduler:
    """Admits and batches generation requests so the measured peak stays within ``budget``.

    Args:
        budget: bytes or a size string ("512MB") shared by every model added.
        max_batch: the largest batch formed.
        fixed_batch: when set, batches of exactly this many requests (or fewer when the
            queue has fewer), memory notwithstanding: the baseline a fixed batch size gives.
    """

    def __init__(self, budget: int | str, *, max_batch: int = 256, fixed_batch: int | None = None) -> None:
        self.budget_bytes = _budget_bytes(budget)
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ConfigError(f"max_batch: got {max_batch!r}, expected an integer >= 1")
        if fixed_batch is not None and (not isinstance(fixed_batch, int) or fixed_batch < 1):
            raise ConfigError(f"fixed_batch: got {fixed_batch!r}, expected an integer >= 1 or None")
        self.max_batch = max_batch
        self.fixed_batch = fixed_batch
        self.models: dict[str, tuple[nn.Module, ModelMemory]] = {}
        self.waiting: deque[Request] = deque()
        self.done: list[Request] = []
        self.batches: list[BatchRecord] = []
        self._next_id = 0

    # ---- admission ---------------------------------------------------------------------
    def add_model(self, name: str, model: nn.Module, memory: ModelMemory | None = None, **calibration: Any) -> ModelMemory:
        """Registers ``model`` under ``name``; its memory figures are calibrated unless given."""
        memory = model_memory(self.models, self.weight_bytes, self.budget_bytes, name, model, memory, calibration)
        self.models[name] = (model, memory)
        log.info("scheduler: model %s: weights %d B, KV %d B/token, reservation %d B x tokens x %.2f",
                 name, memory.weight_bytes, memory.kv_bytes_per_token, memory.widest_buffer * memory.dtype_bytes,
                 memory.safety_factor * memory.headroom)
        return memory

    @property
    def weight_bytes(self) -> int:
        return sum(m.weight_bytes for _, m in self.models.values())

    def predict(self, model: str, batch: int, prompt: int, new: int) -> dict[str, int]:
        """Predicted peak of one batch, with every model's weights resident."""
        p = self.models[model][1].predict(batch, prompt, new)
        others = self.weight_bytes - p["weights"]
        return {**p, "other_weights": others, "total": p["total"] + others}

    def submit(self, model: str, prompt: torch.Tensor, max_new_tokens: int) -> Request:
        """Queues a request. Raises InfeasibleBudgetError when it cannot fit even alone."""
        check_request(self.models, model, prompt, max_new_tokens)
        module = self.models[model][0]
        max_seq = getattr(getattr(module, "config", None), "max_seq", None)
        if max_seq is not None and prompt.numel() + max_new_tokens > max_seq:
            raise ConfigError(f"request: prompt {prompt.numel()} + {max_new_tokens} new tokens exceed "
                              f"{model!r}'s max_seq {max_seq}")
        need = self.predict(model, 1, int(prompt.numel()), max_new_tokens)["total"]
        if need > self.budget_bytes:
            raise InfeasibleBudgetError(
                f"request for {model!r} (prompt {prompt.numel()}, {max_new_tokens} new tokens) needs {need} bytes "
                f"alone, over the budget of {self.budget_bytes}", need)
        request = Request(self._next_id, model, prompt, max_new_tokens, time.perf_counter())
        self._next_id += 1
        self.waiting.append(request)
        return request

    # ---- batching ------------------------------------------------------------------------
    def next_batch(self) -> list[Request]:
        """The batch the next step runs: the oldest request and same-shaped followers that fit."""
        if not self.waiting:
            return []
        head = self.waiting[0]
        mates = [r for r in self.waiting if r.model == head.model and r.prompt_len == head.prompt_len]
        if self.fixed_batch is not None:
            return mates[:self.fixed_batch]
        batch: list[Request] = []
        for r in mates[:self.max_batch]:
            trial = batch + [r]
            new = max(x.max_new_tokens for x in trial)
            if self.predict(head.model, len(trial), head.prompt_len, new)["total"] > self.budget_bytes:
                break
            batch = trial
        return batch

    def step(self, tracker: Any = None) -> BatchRecord | None:
        """Runs one batch; returns its record (None when nothing waits)."""
        batch = self.next_batch()
        if not batch:
            return None
        name = batch[0].model
        model = self.models[name][0]
        new = max(r.max_new_tokens for r in batch)
        ids = torch.stack([r.prompt for r in batch]).to(next(model.parameters()).device)
        predicted = self.predict(name, len(batch), batch[0].prompt_len, new)
        if tracker is not None:
            tracker.reset_peak()
            base = tracker.current_bytes
        start = time.perf_counter()
        out = generate(model, ids, new)
        seconds = time.perf_counter() - start
        measured = 0
        if tracker is not None:
            # Everything allocated since the run began, plus the models' resident weights.
            measured = self.weight_bytes + max(tracker.peak_bytes, base)
        now = time.perf_counter()
        ids_done = {r.id for r in batch}
        self.waiting = deque(r for r in self.waiting if r.id not in ids_done)
        for row, r in enumerate(batch):
            r.tokens = out.tokens[row, :r.prompt_len + r.max_new_tokens].cpu()
            r.finished_at = now
            self.done.append(r)
        record = BatchRecord(name, len(batch), batch[0].prompt_len, new, sum(r.max_new_tokens for r in batch),
                             predicted, measured, seconds, [r.id for r in batch])
        self.batches.append(record)
        return record

    def run(self) -> SchedulerReport:
        """Runs until the queue is empty; measures every batch's peak (CPU counting allocator
        or CUDA allocator statistics)."""
        devices = {next(m.parameters()).device for m, _ in self.models.values()}
        device = next(iter(devices)) if devices else torch.device("cpu")
        first = len(self.batches)
        start = time.perf_counter()
        with track_memory(device) as tracker:
            while self.step(tracker) is not None:
                pass
        wall = time.perf_counter() - start
        ran = self.batches[first:]
        measured = max((b.measured_peak_bytes for b in ran), default=0)
        predicted = max((b.predicted["total"] for b in ran), default=0)
        over = sum(b.measured_peak_bytes > self.budget_bytes for b in ran)
        report = SchedulerReport(self.budget_bytes, sum(b.batch for b in ran), len(self.waiting),
                                 sum(b.useful_tokens for b in ran), wall, measured, predicted, over, ran,
                                 {n: describe(m) for n, (_, m) in self.models.items()})
        log.info("scheduler: %d requests in %d batches, %.1f tokens/s, peak %d of budget %d bytes",
                 report.completed, len(ran), report.tokens_per_second, measured, self.budget_bytes)
        return report

    def worst_case_batch(self, model: str, prompt: int, new: int) -> int:
        """The largest batch whose worst case (``prompt``, ``new``) fits the budget: the
        fixed batch size a scheduler without memory awareness would have to use."""
        b = 0
        while b < self.max_batch and self.predict(model, b + 1, prompt, new)["total"] <= self.budget_bytes:
            b += 1
        return b
