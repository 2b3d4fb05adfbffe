"""``memscale.fit``: the largest batch or sequence length whose step has a plan within a
budget, the plan that does it, and the smallest budget of the given inputs.

The model is profiled at two sizes of the varied dimension (batch: activations are linear
in it) or three (seq: attention's scores may be quadratic); the engine's core fits every
layer's terms through those profiles (``GraphScaling``) and searches the largest size it
can plan within the budget (doubling, then bisection; every "fits" is the engine's). One
more profile at the answer checks it: the plan is re-made from that profile, and if it
does not fit the search is repeated with that profile among the points, below the answer.
Nothing is allocated for a model on the meta device. docs/fit.md has the model and limits.

Example:
    >>> import torch, memscale
    >>> from memscale.testing import models
    >>> model = models.build("gpt", n_layers=2, d_model=32, d_ff=64, vocab=64, max_seq=32)
    >>> ids = models.example_inputs("gpt", model, batch=2, seq=16)
    >>> r = memscale.fit(model, ids, "64MiB", vary="batch")
    >>> r.size >= 1 and r.plan.predicted_peak_bytes <= r.budget_bytes
    True
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from .. import _C
from .._coerce import as_config
from ..errors import ConfigError, InfeasibleBudgetError, MemScaleError
from ..hardware import detect_hardware, model_device
from ..planning import fit_search, min_budget, plan
from ..profiler.profile import profile
from ..progress import progress
from .resize import VARY, current_size, inputs_maker, resize_inputs

_log = logging.getLogger("memscale")

#: Largest batch searched when the caller gives no max_size (a step of 2^20 samples is
#: beyond any budget the engine plans; the search stops at the first refusal long before).
DEFAULT_MAX_BATCH = 1 << 20
#: The most profiles one fit goes through (GraphScaling: a line or a quadratic).
MAX_POINTS = 3
#: Rounds of re-fitting with the check profile before the advisor gives up.
CHECK_ROUNDS = 4


@dataclass
class FitResult:
    """What :func:`fit` found.

    ``size``: the largest ``vary`` size that fits (None for ``vary=None``); ``plan``: the
    engine's plan at it, made from a profile at that size; ``graph``: that profile;
    ``min_budget_bytes``: the smallest budget of the given inputs; ``next_min_budget_bytes``:
    the smallest budget of ``size + 1`` on the scaled graph (0 when capped); ``capped``: the
    answer is ``max_size`` and larger sizes were not searched."""

    vary: str | None
    size: int | None
    given_size: int | None
    budget_bytes: int
    plan: Any
    graph: Any
    min_budget_bytes: int
    next_min_budget_bytes: int = 0
    capped: bool = False
    profiled_sizes: list[int] = field(default_factory=list)
    quadratic: bool = False
    training: bool = True

    def summary(self) -> str:
        fmt = _C.format_bytes
        lines = []
        if self.vary is not None:
            what = "inference" if not self.training else "training"
            lines.append(f"largest {self.vary} within {fmt(self.budget_bytes)} ({what}): {self.size}"
                         + (" (the search's upper bound)" if self.capped else ""))
            if not self.capped:
                lines.append(f"{self.vary} {self.size + 1} needs at least {fmt(self.next_min_budget_bytes)}")
            lines.append(f"profiled at {self.vary} {', '.join(map(str, self.profiled_sizes))}"
                         f" ({'quadratic' if self.quadratic else 'linear'} terms)")
        lines.append(f"smallest budget at the given inputs ({self.vary or 'as given'} "
                     f"{self.given_size if self.given_size is not None else ''}): {fmt(self.min_budget_bytes)}".rstrip())
        if self.plan is not None:
            lines.append(self.plan.summary())
        return "\n".join(lines)


def _points(vary: str, given: int, limit: int) -> list[int]:
    """Sizes to profile at: the given size and its double for batch; for seq three sizes up
    to 3x the given one (within the model's positions). Never 1: a size-1 dimension runs
    other kernels (broadcast, squeezed matmuls) whose workspace is off the line the larger
    sizes are on (measured: a 1B Llama's block workspace is larger at batch 1 than at 2)."""
    count = 2 if vary == "batch" else 3
    base = max(given, 2)
    top = min(base * count, limit)
    points = sorted({max(2, (top * k) // count) for k in range(1, count + 1)})
    if len(points) < 2:
        raise ConfigError(f"fit: cannot profile two distinct {vary} sizes from 2 to {limit}")
    return points


def _hardware(hardware: Any, model: nn.Module) -> Any:
    if hardware is not None:
        return hardware
    device = model_device(model)
    return detect_hardware() if device.type == "meta" else detect_hardware(device=device)


def fit(model: nn.Module, example_inputs: Any, budget: Any = None, vary: str | None = "batch", *,
        cfg: Any = None, training: bool = True, optimizer: Any = "adamw", loss_fn: Any = None,
        autocast: Any = None, make_inputs: Callable[[int], Any] | None = None, size: int | None = None,
        max_size: int | None = None, hardware: Any = None, **config_kwargs: Any) -> FitResult:
    """The largest ``vary`` size whose step the engine plans within ``budget``.

    Args:
        model: any module (a meta-device definition works: nothing is allocated).
        example_inputs: the step's inputs (a tensor, tuple of args or dict of kwargs).
        budget: bytes, ``"2GiB"`` or a fraction of device memory (``memory_budget``); None:
            ``cfg``'s budget.
        vary: ``"batch"`` (dim 0 of every tensor input), ``"seq"`` (dim 1 of integer token
            inputs) or None (no search: the plan and smallest budget of the given inputs).
        training: a training step (with ``optimizer``, ``loss_fn``, ``autocast`` as for
            ``memscale.wrap``) or inference (``False``: weights, KV cache, reservation).
        make_inputs: ``size -> inputs`` for models whose inputs are not resized that way;
            ``size`` is then the size of ``example_inputs`` (default: read from them).
        max_size: the largest size searched (default: the model's max positions for seq,
            2^20 for batch).
        hardware: a ``memscale.Hardware`` to plan for (default: detected for the model's device).
        config_kwargs: other Config keys (``mode``, ``techniques``, ...).

    Raises:
        memscale.ConfigError: an unknown ``vary``, inputs without the axis, bad sizes.
        memscale.InfeasibleBudgetError: not even size 1 fits (``min_budget_bytes`` is the
            smallest budget for size 1).
    """
    if vary is not None and vary not in VARY:
        raise ConfigError(f"fit: vary must be one of {list(VARY)} or None, got {vary!r}")
    if budget is not None:
        config_kwargs = {**config_kwargs, "memory_budget": budget}
    config = as_config(cfg, config_kwargs, caller="fit")
    hw = _hardware(hardware, model)
    optimizer = optimizer if training else "none"

    def profile_at(inputs: Any) -> Any:
        return profile(model, inputs, training=training, optimizer=optimizer, loss_fn=loss_fn, autocast=autocast)

    if vary is None:
        graph = profile_at(example_inputs)
        return _at_given(graph, config, hw, training)
    make = inputs_maker(example_inputs, vary, make_inputs)
    given = int(size) if size is not None else current_size(example_inputs, vary)
    if given < 1:
        raise ConfigError(f"fit: size must be a positive {vary} size, got {given}")
    graphs: dict[int, Any] = {}
    with progress(total=None, desc=f"memscale fit ({vary})", unit="profile") as bar:
        def graph_at(n: int) -> Any:
            if n not in graphs:
                bar.set_postfix_str(f"{vary}={n}")
                graphs[n] = profile_at(make(n))
                bar.update(1)
            return graphs[n]

        first = graph_at(given)
        limit = max_size or (first.max_positions if vary == "seq" and first.max_positions > 0 else DEFAULT_MAX_BATCH)
        if limit < 1:
            raise ConfigError(f"fit: max_size must be positive, got {limit}")
        points = _points(vary, given, limit)
        result, checked, upper = None, None, limit
        for _ in range(CHECK_ROUNDS):
            scaling = _C.GraphScaling([graph_at(n) for n in points], points, vary)
            try:
                result = fit_search(scaling, config, hw, 1, upper)
            except InfeasibleBudgetError:
                # size 1 refused on the scaled graph: its minimum is stated from a profile at 1
                _refuse_size_one(graph_at(1), config, hw, vary)
                points = sorted(sorted(set(points) | {1})[:MAX_POINTS])  # 1 fits as profiled: fit through it
                continue
            checked = graph_at(result.size)
            try:
                final = plan(checked, config, hardware=hw)
                break
            except InfeasibleBudgetError as refusal:
                _log.info("fit: %s %d from the scaled profiles does not fit as profiled (needs %d bytes); "
                          "re-fitting with that profile", vary, result.size, refusal.min_budget_bytes)
                upper = result.size - 1
                if upper < 1:
                    raise
                # three points nearest the refused answer: a term that curves (a batch x batch
                # similarity, a workspace past its bend) gets its quadratic from them
                near = sorted(set(points) | {result.size}, key=lambda n: (abs(n - result.size), n))
                points = sorted(near[:MAX_POINTS])
        else:
            raise MemScaleError(f"fit: no {vary} size the scaled profiles propose fits as profiled after "
                                f"{CHECK_ROUNDS} rounds (last tried {result.size if result else 1}); give make_inputs or max_size")
    next_min = next((p.predicted_peak_bytes for p in result.probes if p.size == result.size + 1 and not p.fits), 0)
    out = FitResult(vary=vary, size=int(result.size), given_size=given, budget_bytes=int(final.budget_bytes),
                    plan=final, graph=checked, min_budget_bytes=min_budget(first, config, hw),
                    next_min_budget_bytes=int(next_min), capped=bool(result.capped), profiled_sizes=sorted(graphs),
                    quadratic=bool(scaling.any_quadratic), training=training)
    _log.info("fit: largest %s %d within %d bytes (%d engine plans, profiles at %s)", vary, out.size,
              out.budget_bytes, len(result.probes), out.profiled_sizes)
    return out


def _refuse_size_one(graph: Any, config: Any, hw: Any, vary: str) -> None:
    """Raise InfeasibleBudgetError with the smallest budget of size 1 (profiled) when it
    exceeds the budget; return when size 1 fits."""
    try:
        plan(graph, config, hardware=hw)
    except InfeasibleBudgetError:
        need = min_budget(graph, config, hw)
        raise InfeasibleBudgetError(f"fit: even {vary} 1 does not fit the budget; the smallest budget for {vary} 1 "
                                    f"is {_C.format_bytes(need)} (min_budget_bytes = {need})", need) from None


def _at_given(graph: Any, config: Any, hw: Any, training: bool) -> FitResult:
    """vary=None: the plan (None when it does not fit) and smallest budget of the inputs as given."""
    try:
        at = plan(graph, config, hardware=hw)
        budget = int(at.budget_bytes)
    except InfeasibleBudgetError:
        at, budget = None, 0
    return FitResult(vary=None, size=None, given_size=None, budget_bytes=budget, plan=at, graph=graph,
                     min_budget_bytes=min_budget(graph, config, hw), training=training)


def fit_frontier(model: nn.Module, example_inputs: Any, budget: Any, contexts: list[int], *,
                 training: bool = False, **kwargs: Any) -> list[FitResult]:
    """The largest batch at each context length in ``contexts`` (ascending): the batch x
    context frontier of ``budget``, by default for inference. The inputs are resized along
    seq to each context (integer token inputs, see :func:`fit`), then :func:`fit` with
    ``vary="batch"``. Stops at the first context where not even batch 1 fits (longer
    contexts need more); the results are those that fit. ``kwargs`` as for :func:`fit`."""
    sizes = [int(c) for c in contexts]
    if not sizes or any(c < 1 for c in sizes) or sizes != sorted(set(sizes)):
        raise ConfigError(f"fit_frontier: contexts must be distinct positive ints in ascending order, got {contexts!r}")
    current_size(example_inputs, "seq")
    results: list[FitResult] = []
    for context in sizes:
        try:
            results.append(fit(model, resize_inputs(example_inputs, "seq", context), budget, vary="batch",
                               training=training, **kwargs))
        except InfeasibleBudgetError as refusal:
            _log.info("fit_frontier: context %d does not fit even at batch 1 (needs %d bytes)", context,
                      refusal.min_budget_bytes)
            break
    return results
