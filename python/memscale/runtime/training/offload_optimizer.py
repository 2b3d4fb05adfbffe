"""Optimizer-state (and gradient) offload for the optimizer the user created.

``OffloadedOptimizer(opt, ...)`` keeps ``opt``'s per-parameter state (Adam/AdamW
``exp_avg``, ``exp_avg_sq``, ``step``; SGD ``momentum_buffer``) on the next tier
(:mod:`.state_tier`: the disk on a CPU-only machine, pinned host memory on CUDA), and,
with ``gradients=True``, each gradient too, moved there by a post-accumulate-grad hook as
soon as autograd has produced it (micro-batches accumulate into the stored gradient:
``stored + new``, the same sum autograd forms).

The step runs window by window (a window: consecutive parameters of one param group, at
most ``window_bytes`` of parameters, at least one): the window's state and gradients are
loaded (the next window's are read meanwhile on a background thread), ``opt.step()`` runs
with the group's ``params`` narrowed to the window, and the updated state is written back
in the background. So the update math is the user's optimizer itself (torch's own Adam,
AdamW, SGD, with the group's hyperparameters), and at most three windows of state are
resident: the one stepping, the next one being read, the previous one being written.

Limits: the optimizer must be one the engine models (Adam, AdamW, SGD; a ConfigError
names the others); step hooks registered on ``opt`` run once per window; with offloaded
gradients ``p.grad`` is None between backward and step (clip with
:meth:`OffloadedOptimizer.clip_grad_norm_`, read them through :meth:`OffloadedOptimizer.grads`); ``state_dict()`` loads the whole state at once.

Everything that can fail is checked before the optimizer or the model is touched: the
directory (``check_offload_dir``: missing and not creatable, read-only, too small for the
state and gradients), the optimizer kind, the tier.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..._C import optimizer_state_factor
from ..._coerce import format_bytes
from ...errors import ConfigError, OffloadDirError
from ...profiler.optimizer import optimizer_spec
from ..offload_dir import check_offload_dir
from .state_tier import ALIGN, TIERS, StateTier

log = logging.getLogger("memscale")

#: Where the disk tier writes when neither ``directory`` nor MEMSCALE_OFFLOAD_DIR is given.
DEFAULT_STATE_DIR = Path(tempfile.gettempdir()) / "memscale-offload"

def _param_bytes(p: torch.Tensor) -> int:
    return p.numel() * p.element_size()


def _windows(groups: list[dict[str, Any]], window_bytes: int | None) -> list[tuple[int, list[int]]]:
    """(group index, flat parameter indices) per window, in the optimizer's order."""
    out: list[tuple[int, list[int]]] = []
    flat = 0
    for gi, group in enumerate(groups):
        current: list[int] = []
        size = 0
        for p in group["params"]:
            nbytes = _param_bytes(p)
            if current and (window_bytes is None or size + nbytes > window_bytes):
                out.append((gi, current))
                current, size = [], 0
            current.append(flat)
            size += nbytes
            flat += 1
        if current:
            out.append((gi, current))
    return out


class OffloadedOptimizer(torch.optim.Optimizer):
    """``opt`` with its state (and optionally gradients) on the next tier; see the module
    docstring. Shares ``param_groups`` with ``opt``, so LR schedulers work on either.

    Args:
        opt: a torch.optim.Adam, AdamW or SGD instance (state may already exist).
        tier: ``"auto"`` (``host`` when the parameters are on CUDA, else ``disk``),
            ``"disk"`` or ``"host"``.
        directory: the disk tier's directory (default MEMSCALE_OFFLOAD_DIR or
            ``DEFAULT_STATE_DIR``); checked before anything is written.
        gradients: also move each gradient to the tier as it is produced.
        window_bytes: parameter bytes stepped at once (None: one parameter per window).
        prefetch: read the next window on the background thread while one steps.
        weights: the training pager (:class:`~.weight_paging.TrainingPager`) of paged
            layers: each window's parameters are made resident for the step and their
            layer written home after it.
        serial: one window at a time: each read after the previous one is written (no
            prefetch, no overlap; the least memory).
    """

    def __init__(self, opt: torch.optim.Optimizer, *, tier: str = "auto",
                 directory: str | os.PathLike[str] | None = None, gradients: bool = False,
                 window_bytes: int | None = None, prefetch: bool = True, weights: Any = None,
                 serial: bool = False) -> None:
        if isinstance(opt, OffloadedOptimizer):
            raise ConfigError("optimizer: already offloaded; pass the wrapped optimizer once")
        kind, _ = optimizer_spec(opt)  # ConfigError for an optimizer the engine does not model
        if window_bytes is not None and (isinstance(window_bytes, bool) or not isinstance(window_bytes, int)
                                         or window_bytes <= 0):
            raise ConfigError(f"window_bytes: {window_bytes!r}; expected None or an int > 0")
        params = [p for g in opt.param_groups for p in g["params"]]
        devices = {p.device.type for p in params}
        if tier == "auto":
            tier = "host" if "cuda" in devices else "disk"
        if tier not in TIERS:
            raise ConfigError(f"tier: {tier!r} is not one of {['auto', *TIERS]}")
        if tier == "host" and not torch.cuda.is_available():
            raise ConfigError("tier: 'host' (pinned host memory) needs CUDA; this machine has none, use 'disk'")
        where: Path | None = None
        if tier == "disk":
            trainable = [p for p in params if p.requires_grad]
            factor = optimizer_state_factor(kind)
            # state: factor x parameter bytes, plus per-parameter scalars (Adam's step) and
            # the alignment of each tensor in its record; gradients: one copy each.
            needed = sum(factor * _param_bytes(p) + 2 * ALIGN * (factor + 1) for p in trainable)
            if gradients:
                needed += sum(_param_bytes(p) + ALIGN for p in trainable)
            where = check_offload_dir(directory or os.environ.get("MEMSCALE_OFFLOAD_DIR") or DEFAULT_STATE_DIR,
                                      needed, "optimizer state" + (" and gradients" if gradients else ""))
        # Checks passed: from here on the optimizer and the model are changed.
        self.inner = opt
        self.kind = kind
        self.defaults = opt.defaults
        self._params = params
        self._index = {id(p): i for i, p in enumerate(params)}
        self.window_bytes = window_bytes
        self._prefetch_asked = prefetch
        self.serial = bool(serial)
        self.prefetch = prefetch and not self.serial
        self.weights = weights
        self.offload_gradients = gradients
        self.tier = StateTier(tier, where)
        self._hooks: list[Any] = []
        self._paused = False
        self._has_grad: set[int] = set()
        self._last_grad: str | None = None
        # torch.optim.Optimizer's own machinery (hooks, profiling) on the same groups.
        super().__init__(params, opt.defaults)
        self.param_groups = opt.param_groups
        self.state = opt.state
        for i, p in enumerate(params):
            if p in opt.state and opt.state[p]:
                self.tier.store(self._state_key(i), opt.state.pop(p))
            if gradients and p.requires_grad:
                self._hooks.append(p.register_post_accumulate_grad_hook(self._grad_hook))
        self.tier.wait_writes()
        if self.tier.kept_bytes():  # the existing state could not be written: undo, then say why
            for i, p in enumerate(params):
                if self._state_key(i) in self.tier:
                    opt.state[p] = self.tier.load(self._state_key(i))
            for h in self._hooks:
                h.remove()
            errors, where_failed = self.tier.take_write_errors(), self.tier.dir
            self.tier.close()
            raise OffloadDirError(f"offload directory {str(where_failed)!r}: writing the optimizer's existing "
                                  f"state failed (first: {errors[0]}); the optimizer and the model are unchanged")
        # Files go with the optimizer: on close(), when it is collected, at interpreter exit.
        self._finalizer = weakref.finalize(self, self.tier.close)
        log.info("optimizer offload: %s state of %d parameters on the %s tier%s, %s",
                 type(opt).__name__, len(params), tier, f" ({self.tier.dir})" if self.tier.dir else "",
                 "gradients too" if gradients else "gradients resident")

    def set_paging(self, weights: Any, serial: bool) -> None:
        """Step with another training pager (a new plan) and windowing (``serial``)."""
        self.weights = weights
        self.serial = bool(serial)
        self.prefetch = self._prefetch_asked and not self.serial

    # -- keys ----------------------------------------------------------------------------
    @staticmethod
    def _state_key(i: int) -> str:
        return f"state-{i}"

    @staticmethod
    def _grad_key(i: int) -> str:
        return f"grad-{i}"

    # -- gradients -----------------------------------------------------------------------
    @contextlib.contextmanager
    def grad_hooks_paused(self) -> Iterator[None]:
        """Gradients made inside stay where autograd put them (``p.grad``): a profiling step
        (the first-step re-plan) must not add its gradients to the stored ones."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def _grad_hook(self, p: torch.Tensor) -> None:
        if self._paused:
            return
        i = self._index[id(p)]
        grad = p.grad
        p.grad = None
        if grad is None:
            return
        key = self._grad_key(i)
        if i in self._has_grad:
            grad = self.tier.load(key)["grad"].add_(grad)  # stored + new: autograd's own sum
        self.tier.store(key, {"grad": grad})
        self._has_grad.add(i)
        # One gradient in flight: backward's memory stays that of the resident run.
        if self._last_grad is not None and self._last_grad != key:
            self.tier.wait_write(self._last_grad)
        self._last_grad = key

    def grads(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(parameter, gradient) of every parameter with a gradient, one at a time (the
        offloaded ones loaded from the tier; write back with :meth:`set_grad`)."""
        for i, p in self._grad_sources():
            yield p, self._grad_of(i, p)

    def set_grad(self, p: torch.Tensor, grad: torch.Tensor) -> None:
        """Replace an offloaded parameter's stored gradient (e.g. after clipping)."""
        i = self._index[id(p)]
        if p.grad is not None or not self.offload_gradients:
            p.grad = grad
            return
        self.tier.store(self._grad_key(i), {"grad": grad})
        self._has_grad.add(i)

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
        """``torch.nn.utils.clip_grad_norm_`` over every gradient, resident or stored, one
        at a time: a pass for the total norm (the norm of the per-gradient norms, as torch
        forms it), a pass scaling each by ``clip_grads_with_norm_``. Returns the total norm."""
        pairs = list(self._grad_sources())
        if not pairs:
            return torch.tensor(0.0)
        norms = [torch.linalg.vector_norm(self._grad_of(i, p), norm_type) for i, p in pairs]
        total = torch.linalg.vector_norm(torch.stack(norms), norm_type)
        for i, p in pairs:
            if p.grad is not None:
                torch.nn.utils.clip_grads_with_norm_([p], max_norm, total)
                continue
            p.grad = self._grad_of(i, p)
            torch.nn.utils.clip_grads_with_norm_([p], max_norm, total)
            self.tier.store(self._grad_key(i), {"grad": p.grad})
            p.grad = None
            self.tier.wait_write(self._grad_key(i))
        return total

    def _grad_sources(self) -> Iterator[tuple[int, torch.Tensor]]:
        for i, p in enumerate(self._params):
            if p.grad is not None or i in self._has_grad:
                yield i, p

    def _grad_of(self, i: int, p: torch.Tensor) -> torch.Tensor:
        return p.grad if p.grad is not None else self.tier.load(self._grad_key(i))["grad"]

    def io_stats(self) -> dict[str, Any]:
        """Tier traffic so far: bytes read and written, read seconds, seconds the step
        waited for reads, and the share of read time hidden by prefetch (disk tier)."""
        t = self.tier
        return {"tier": t.tier, "bytes_read": t.bytes_read, "bytes_written": t.bytes_written,
                "read_seconds": t.read_seconds, "read_wait_seconds": t.read_wait_seconds,
                "hidden_read_share": t.hidden_read_share()}

    # -- the step ------------------------------------------------------------------------
    def _prefetch_window(self, window: list[int]) -> None:
        for i in window:
            self.tier.prefetch(self._state_key(i))
            if i in self._has_grad:
                self.tier.prefetch(self._grad_key(i))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        windows = _windows(self.param_groups, self.window_bytes)
        if self.weights is not None:
            self.weights.begin_update()
        try:
            if self.prefetch and windows:
                self._prefetch_window(windows[0][1])
            for n, (gi, window) in enumerate(windows):
                if self.prefetch and n + 1 < len(windows):
                    self._prefetch_window(windows[n + 1][1])
                self._step_window(gi, window)
                # At most one window being written while the next one steps; serial: none.
                for i in windows[n][1] if self.serial else windows[n - 1][1] if n else []:
                    self.tier.wait_write(self._state_key(i))
        finally:
            if self.weights is not None:
                self.weights.end_update()
        self.tier.wait_writes()
        self._last_grad = None
        self._raise_write_errors()
        return loss

    def _raise_write_errors(self) -> None:
        errors = self.tier.take_write_errors()
        if errors:
            raise OffloadDirError(
                f"offload directory {str(self.tier.dir)!r}: {len(errors)} write(s) of optimizer state or "
                f"gradients failed (first: {errors[0]}); the step completed and the "
                f"{format_bytes(self.tier.kept_bytes())} not written are kept in memory; free space "
                "and keep training (the next step writes them again), or close() to take the state back")

    def _step_window(self, gi: int, window: list[int]) -> None:
        params = [self._params[i] for i in window]
        loaded_grads: list[torch.Tensor] = []
        for i, p in zip(window, params):
            key = self._state_key(i)
            if key in self.tier:
                self.inner.state[p] = self.tier.load(key)
            if i in self._has_grad and p.grad is None:
                p.grad = self.tier.load(self._grad_key(i))["grad"]
                loaded_grads.append(p)
        if self.weights is not None:
            self.weights.hold(params)
        group = self.inner.param_groups[gi]
        all_groups, all_params = self.inner.param_groups, group["params"]
        try:
            group["params"] = params
            self.inner.param_groups = [group]
            self.inner.step()
        finally:
            group["params"] = all_params
            self.inner.param_groups = all_groups
        for i, p in zip(window, params):
            state = self.inner.state.pop(p, None)
            if state:
                self.tier.store(self._state_key(i), state)
        for p in loaded_grads:
            p.grad = None  # the stored gradient stays until zero_grad

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)
        for i in sorted(self._has_grad):
            if set_to_none:
                self.tier.discard(self._grad_key(i))
            else:
                zeroed = self.tier.load(self._grad_key(i))
                zeroed["grad"].zero_()
                self.tier.store(self._grad_key(i), zeroed)
        if set_to_none:
            self._has_grad.clear()

    # -- checkpoints and teardown --------------------------------------------------------
    def _resident_state(self) -> None:
        for i, p in enumerate(self._params):
            key = self._state_key(i)
            if key in self.tier:
                self.inner.state[p] = self.tier.load(key)

    def _offload_state(self) -> None:
        for i, p in enumerate(self._params):
            state = self.inner.state.pop(p, None)
            if state:
                self.tier.store(self._state_key(i), state)
        self.tier.wait_writes()

    def state_dict(self) -> dict[str, Any]:
        """``opt.state_dict()`` of the whole state (loaded from the tier for the call)."""
        self._resident_state()
        try:
            return self.inner.state_dict()
        finally:
            self._offload_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.inner.load_state_dict(state_dict)
        self._offload_state()

    def stored_bytes(self) -> int:
        """Bytes on the tier now (state and gradients)."""
        return self.tier.stored_bytes()

    def close(self, restore: bool = True) -> torch.optim.Optimizer:
        """Remove the hooks and the files; with ``restore`` put the state (and stored
        gradients) back into the wrapped optimizer and parameters first. Returns it."""
        if self.tier.closed:
            return self.inner
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        if restore:
            self._resident_state()
            for i in sorted(self._has_grad):
                p = self._params[i]
                g = self.tier.load(self._grad_key(i))["grad"]
                p.grad = g if p.grad is None else p.grad.add_(g)
        self._has_grad.clear()
        self._finalizer()
        log.info("optimizer offload: closed, %s", "state restored" if restore else "state dropped")
        return self.inner

    def __repr__(self) -> str:
        return (f"OffloadedOptimizer({type(self.inner).__name__}, tier={self.tier.tier!r}, "
                f"stored={format_bytes(self.tier.stored_bytes())})")

