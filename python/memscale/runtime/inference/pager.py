"""Offloaded inference: apply the engine's inference plan to a model's weights and KV cache.

``wrap_for_inference`` asks the decision engine for the plan (one decider: the resident
limit, prefetch depth, each layer's weight tier and KV-cache tier, the
reservation; :mod:`.plan_view` reads it), splits the model into paging units matched to
the plan's layers by name, writes the home copy of every unit the plan offloads (a
safetensors file, mode 0600, in ``offload.disk_dir``; pinned host memory on CUDA where the
plan puts a layer's weights on the host), frees their resident memory, and installs
forward hooks: a unit's pre-hook acquires it from the C++ pager (which prefetches the next
``prefetch_n_ahead`` units on its own thread) and its post-hook releases it. Outputs are
bit-identical to the unwrapped model because the very same bytes come back into the very
same parameters.

Everything that can be refused is refused before anything is written: the engine's
refusal (InfeasibleBudgetError with its minimum, or ConfigError), the pager's layout
rules, the directory (missing, not a directory, read-only, full).

Example:
    >>> import memscale, tempfile, torch
    >>> from torch import nn
    >>> from memscale.runtime.inference import wrap_for_inference, unwrap_inference
    >>> model = nn.Sequential(*[nn.Linear(256, 256) for _ in range(8)])
    >>> x = torch.randn(4, 256)
    >>> ref = model(x)
    >>> cfg = memscale.Config(offload={"policy": "budget", "ram_bytes": "600KB",
    ...                                "disk_dir": tempfile.mkdtemp()})
    >>> model = wrap_for_inference(model, cfg, (x,))
    >>> bool(torch.equal(model(x), ref))
    True
    >>> model = unwrap_inference(model)
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import threading
import weakref
from contextlib import contextmanager
from typing import Any, Iterator

from torch import nn

from ... import _C
from ..._coerce import as_config, format_bytes
from ...config import Config
from ...errors import ConfigError, MemScaleError
from ...profiler.storage import storage_bytes
from .. import hooks
from ..hooks import ModuleHooks
from .heap import pin_mmap_threshold, release_freed_memory
from .plan_view import check_inference_plan, inference_plan, policy_from_plan, unit_placements
from .step_tokens import TokenWatch
from .tiers import TierPolicy, tier_policy
from .units import PagingUnit, paging_units

log = logging.getLogger("memscale")

_live: "weakref.WeakSet[OffloadHandle]" = weakref.WeakSet()



class OffloadHandle:
    """State of one wrapped model: units, pager, storage, hooks. ``handle_of(model)`` returns it.

    ``pager`` and ``storage`` are None when the plan pages nothing and only the KV cache
    moves (``units`` is then empty).
    """

    def __init__(self, units: list[PagingUnit], pager: Any, storage: Any, policy: Any, tiers: TierPolicy,
                 private_dir: str | None, unpaged_bytes: int) -> None:
        self.units = units
        self.pager = pager
        self.storage = storage
        self.policy = policy
        self.tiers = tiers
        self.private_dir = private_dir
        self.unpaged_bytes = unpaged_bytes
        self.hooks = ModuleHooks()
        self.plan: Any = None  # the engine's inference plan, when one was made
        self.model: Any = None  # weak reference to the wrapped model
        self._unit_of = {id(m): i for i, u in enumerate(units) for m in u.modules}
        self._held = threading.local()
        self._io_base: dict[str, float] = {}
        self.closed = False
        self.kv_hook: Any = None  # hf_cache.CacheHook: the model's KV cache on its planned tiers
        self.token_watch: Any = None  # step_tokens.TokenWatch: warns once past the planned tokens per step

    # -- hooks ------------------------------------------------------------------
    def _stack(self) -> list[int]:
        if not hasattr(self._held, "stack"):
            self._held.stack = []
        return self._held.stack

    def _pre(self, index: int) -> None:
        self.pager.acquire(index)
        self._stack().append(index)

    def _post(self, index: int) -> None:
        stack = self._stack()
        # Only what this thread acquired: a failed acquire must not become a failed release.
        if stack and stack[-1] == index:
            stack.pop()
            self.pager.release(index)

    def install_hooks(self) -> None:
        for index, unit in enumerate(self.units):
            for module in unit.modules:
                self.hooks.add(module, lambda i=index: self._pre(i), lambda i=index: self._post(i))

    @contextmanager
    def use(self, module: nn.Module) -> Iterator[None]:
        """Keeps the unit holding ``module`` resident inside the block (for code that calls
        a unit's submodules directly, e.g. a KV-cache decoding loop)."""
        index = self._unit_of.get(id(module))
        if index is None:
            yield
            return
        self._pre(index)
        try:
            yield
        finally:
            self._post(index)

    # -- reporting ----------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Pager and storage counters (bytes, seconds) and the prefetch hiding fraction
        (all zero when nothing is paged)."""
        if self.pager is None:
            return _idle_stats(self.unpaged_bytes)
        s = self.pager.stats()
        now = self.storage.io_stats()
        io = {k: getattr(now, k) - self._io_base.get(k, 0) for k in _IO_KEYS}
        return {
            "budget_bytes": s.budget_bytes, "pinned_bytes": s.pinned_bytes, "unpaged_bytes": self.unpaged_bytes,
            "resident_weight_bytes": s.physical_bytes, "peak_resident_weight_bytes": s.peak_physical_bytes,
            "acquires": s.acquires, "hits": s.hits, "prefetch_hits": s.prefetch_hits,
            "late_prefetches": s.late_prefetches, "loads": s.loads, "prefetch_loads": s.prefetch_loads,
            "demand_loads": s.demand_loads, "evictions": s.evictions, "prefetch_dropped": s.prefetch_dropped,
            "bytes_loaded": s.bytes_loaded, "load_seconds": s.load_seconds,
            "prefetch_load_seconds": s.prefetch_load_seconds, "acquire_wait_seconds": s.acquire_wait_seconds,
            "hidden_fraction": s.hidden_fraction, "disk_read_seconds": io["read_seconds"],
            "disk_bytes_read": io["bytes_read"], "disk_bytes_written": io["bytes_written"],
            "disk_write_seconds": io["write_seconds"], "files": len(self.storage.files()),
        }

    def reset_stats(self) -> None:
        """Zeroes the pager's counters and the storage's I/O figures reported by stats()."""
        if self.pager is None:
            return
        self.pager.reset_stats()
        io = self.storage.io_stats()
        self._io_base = {k: getattr(io, k) for k in _IO_KEYS}

    def files(self) -> list[str]:
        return list(self.storage.files()) if self.storage is not None else []

    # -- teardown -------------------------------------------------------------------
    def remove(self) -> None:
        """Unwrap: hooks removed, every parameter's memory back, files deleted; idempotent."""
        self.close(restore=True)
        model = self.model() if self.model is not None else None
        if model is not None:
            hooks.unregister(model, self)
        _live.discard(self)

    def close(self, restore: bool) -> None:
        """Stops the pager, restores the weights (``restore``) and deletes the files."""
        if self.closed:
            return
        self.closed = True
        self.hooks.remove()
        if self.kv_hook is not None:
            self.kv_hook.remove()
            self.kv_hook = None
        if self.token_watch is not None:
            self.token_watch.remove()
            self.token_watch = None
        if self.pager is None:
            return
        self.pager.stop()
        if restore:
            self.storage.restore_all()
        else:
            self.storage.remove_files()
        if self.private_dir:
            shutil.rmtree(self.private_dir, ignore_errors=True)


_IO_KEYS = ("read_seconds", "bytes_read", "bytes_written", "write_seconds")
_PAGER_COUNTERS = ("budget_bytes", "pinned_bytes", "resident_weight_bytes", "peak_resident_weight_bytes", "acquires",
                   "hits", "prefetch_hits", "late_prefetches", "loads", "prefetch_loads", "demand_loads", "evictions",
                   "prefetch_dropped", "bytes_loaded", "load_seconds", "prefetch_load_seconds",
                   "acquire_wait_seconds", "hidden_fraction", "disk_read_seconds", "disk_bytes_read",
                   "disk_bytes_written", "disk_write_seconds", "files")


def _idle_stats(unpaged_bytes: int) -> dict[str, Any]:
    """stats() of a handle that pages nothing: every weight is unpaged, no counter moved."""
    return {"unpaged_bytes": unpaged_bytes, **{k: 0 for k in _PAGER_COUNTERS}}


def handle_of(model: nn.Module) -> OffloadHandle | None:
    """The offload handle of a model wrapped for inference, else None."""
    return hooks.handle_of(model, OffloadHandle)


def wrap_for_inference(model: nn.Module, config: Config | dict[str, Any], example_inputs: tuple | None = None,
                       *, plan: Any = None, calibration: Any = None, file_format: str = "safetensors",
                       drop_page_cache: bool = True) -> nn.Module:
    """Apply the engine's inference plan to ``model``: page its weights, place its KV cache;
    returns the same module.

    The decision engine plans every wrap (:mod:`memscale.runtime.inference.plan_view`) on
    ``memscale.profile(model, example_inputs, training=False)``: the resident-weight limit
    and prefetch depth (``Plan.offload``; an explicit ``offload.policy`` bounds them), each
    layer's weight tier and KV-cache tier (``LayerPlan.kv_tier``, ``Config.tiers.kv_cache``
    fixing their split if given; activations stay on the device), and the activation
    reservation. ``example_inputs`` (positional args of ``forward``) must be
    of the generation's batch and total length: they size the KV cache and the
    reservation's tokens per step, and fix the execution order the prefetch follows.
    ``plan`` gives a ready inference plan instead; ``calibration``
    (``memscale.calibrate_reservation``) refines its reservation.

    Raises (nothing written, model untouched): ConfigError for a Config, directory or
    missing ``example_inputs`` that cannot work; InfeasibleBudgetError when the engine finds
    no plan (``min_budget_bytes`` as ``memscale.plan`` states it).
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model: got {type(model).__name__}, expected a torch.nn.Module")
    if hooks.handle_of(model) is not None:
        raise MemScaleError("model is already wrapped; unwrap it first (memscale.unwrap(model))")
    cfg = as_config(config)
    if plan is None and example_inputs is None:
        raise ConfigError("example_inputs: required; the decision engine plans offloaded inference on "
                          "memscale.profile(model, example_inputs, training=False). Give one batch as forward takes "
                          "it, of the generation's batch and total length (prompt + new tokens)")
    units = paging_units(model, example_inputs)
    if plan is None:
        plan = inference_plan(model, cfg, example_inputs, calibration)
    else:
        check_inference_plan(plan)
    policy = policy_from_plan(cfg, plan)
    tiers = tier_policy(cfg, plan)
    kv_tiers = _planned_kv_tiers(model, plan)  # a plan for another model is refused here, before any write
    weight_bytes = sum(u.bytes for u in units)
    if policy.policy == "none":
        return _wrap_resident(model, cfg, plan, policy, tiers, kv_tiers, weight_bytes)
    places = unit_placements([u.name for u in units], plan)
    specs = [(u.name, u.kind, u.bytes, p.home, p.kept) for u, p in zip(units, places)]
    _C.validate_pager_layout(specs, policy)  # the pager's own rules: names, homes, hot set, single layer
    hot = _C.pager_hot_set(specs, policy)
    private_dir = None
    disk_dir = policy.disk_dir
    storage = None
    try:
        if not disk_dir:
            disk_dir = private_dir = tempfile.mkdtemp(prefix="memscale-weights-")
        storage = _C.TorchPagerStorage(disk_dir, file_format, 16 << 20, drop_page_cache)
        for u, place in zip(units, places):
            names = list(u.params)
            storage.add_layer(u.name, names, [u.params[n].detach() for n in names], place.home)
        required = storage.disk_bytes_required(hot.pinned)
        free = shutil.disk_usage(disk_dir).free if required > 0 and os.path.isdir(disk_dir) else None
        storage.write_home_copies(hot.pinned, free)
        pager = _C.LayerPager(specs, policy, storage, order=list(range(len(units))), cyclic=True)
    except BaseException:
        if storage is not None:
            storage.restore_all()  # frees nothing that is resident; removes any file written
        if private_dir:
            shutil.rmtree(private_dir, ignore_errors=True)
        raise
    paged = {id(p) for u in units for p in u.params.values()}
    unpaged = storage_bytes([*(p for p in model.parameters() if id(p) not in paged), *model.buffers()])
    handle = OffloadHandle(units, pager, storage, policy, tiers, private_dir, unpaged)
    handle.plan = plan
    handle.install_hooks()
    handle.kv_hook = _install_kv_hook(model, kv_tiers, storage.dir)
    _register(model, handle)
    # The pager just freed the resident copy of every paged unit: glibc keeps freed heap
    # pages in the process unless told to return them, and those frees raised its mmap
    # threshold so later activations would stay resident too (heap.py).
    if not any(p.is_cuda for u in units for p in u.params.values()):
        pin_mmap_threshold()
        release_freed_memory()
        # What a forward (a decoding step) frees goes back too: the heap holds the freed
        # weights' space, which activations reuse and would otherwise leave resident.
        handle.hooks.add(model, _nothing, _release_after_forward)
    log.info("offloaded inference: %d units, %d pinned (%s, of which %s kept on the device by the plan), "
             "weights %s, ram_bytes %s, prefetch %d ahead, files in %s", len(units), sum(hot.pinned),
             format_bytes(hot.pinned_bytes), format_bytes(hot.planned_bytes), format_bytes(weight_bytes),
             format_bytes(policy.ram_bytes), policy.prefetch_n_ahead, storage.dir)
    return model


def _wrap_resident(model: nn.Module, cfg: Config, plan: Any, policy: Any, tiers: TierPolicy,
                   kv_tiers: list[str] | None, weight_bytes: int) -> nn.Module:
    """The plan keeps every weight resident: nothing is paged, but a KV cache the plan puts
    off the device still gets its tiers (the KV hook). Nothing to apply: model untouched."""
    kv_hook = _install_kv_hook(model, kv_tiers, cfg.offload.get("disk_dir") or None)
    if kv_hook is None:
        log.info("offloaded inference: the plan keeps all %s of weights and the KV cache resident; nothing to "
                 "apply", format_bytes(weight_bytes))
        return model
    handle = OffloadHandle([], None, None, policy, tiers, None, weight_bytes)
    handle.plan = plan
    handle.kv_hook = kv_hook
    _register(model, handle)
    log.info("offloaded inference: all %s of weights stay resident; the KV cache goes on its planned tiers",
             format_bytes(weight_bytes))
    return model


def _register(model: nn.Module, handle: OffloadHandle) -> None:
    tokens = plan_tokens(handle.plan)
    handle.token_watch = TokenWatch(model, tokens) if tokens > 0 else None
    handle.model = weakref.ref(model)
    hooks.register(model, handle)
    _live.add(handle)


def plan_tokens(plan: Any) -> int:
    """Tokens per step the plan's activation reservation is sized for (0: no reservation)."""
    reservation = plan.reservation
    return int(reservation.tokens_per_step) if reservation.used else 0


def _nothing() -> None:
    pass


def _release_after_forward() -> None:
    release_freed_memory()  # its result must not become the forward's output


def _planned_kv_tiers(model: nn.Module, plan: Any) -> list[str] | None:
    """The plan's ``kv_tier`` of each of the model's cache layers
    (:func:`memscale.runtime.inference.hf_cache.planned_tiers`); None for a model whose
    forward takes no cache (or without transformers: no Cache to fill)."""
    try:
        from . import hf_cache
    except ImportError:
        return None
    return hf_cache.planned_tiers(model, plan) if hf_cache.takes_cache(model) else None


def _install_kv_hook(model: nn.Module, kv_tiers: list[str] | None, disk_dir: str | None) -> Any:
    """The calls of a model whose forward takes a cache (``model.generate`` included) get a
    KV cache with each layer on its planned tier (:mod:`memscale.runtime.inference.hf_cache`);
    None for other models, or when the plan keeps every layer's cache on the device."""
    if kv_tiers is None:
        return None
    from . import hf_cache

    hook = hf_cache.install(model, kv_tiers, disk_dir)
    if hook is not None:
        log.info("offloaded inference: KV cache of %s on tiers %s (files in %s)", type(model).__name__,
                 hook.layer_tiers, disk_dir)
    return hook


def unwrap_inference(model: nn.Module) -> nn.Module:
    """Removes the hooks, gives every parameter its memory back (same objects, same
    bytes) and deletes the files. Returns the same module."""
    handle = handle_of(model)
    if handle is None:
        return model
    handle.remove()
    log.info("offloaded inference: unwrapped, weights restored, files removed")
    return model


@atexit.register
def _remove_files_at_exit() -> None:
    for handle in list(_live):
        try:
            handle.close(restore=False)
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass
