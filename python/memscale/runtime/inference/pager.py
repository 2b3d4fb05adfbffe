"""Offloaded inference: page a model's weights under ``Config.offload`` (weight residency policy).

``wrap_for_inference`` splits the model into paging units, writes the home copy of every
unit outside the pinned hot set (a safetensors file, mode 0600, in ``offload.disk_dir``;
pinned host memory on CUDA where the tier policy puts weights on the CPU), frees their
resident memory, and installs forward hooks: a unit's pre-hook acquires it from the
C++ pager (which prefetches the next ``prefetch_n_ahead`` units on its own thread) and
its post-hook releases it. Outputs are bit-identical to the unwrapped model because the
very same bytes come back into the very same parameters.

Everything that can be refused is checked before anything is written: the policy, the
budget against the hot set, the directory (missing, not a directory, read-only, full).

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
import json
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
from .plan_view import device_layers, inference_plan, needs_plan, policy_from_plan
from .tiers import TierPolicy, tier_policy
from .units import PagingUnit, paging_units

log = logging.getLogger("memscale")

_live: "weakref.WeakSet[OffloadHandle]" = weakref.WeakSet()



class OffloadHandle:
    """State of one wrapped model: units, pager, storage, hooks. ``handle_of(model)`` returns it."""

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
        self.kv_hook: Any = None  # hf_cache.CacheHook: the KV cache of a Hugging Face model on its tiers

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
        """Pager and storage counters (bytes, seconds) and the prefetch hiding fraction."""
        s = self.pager.stats()
        now = self.storage.io_stats()
        io = {k: getattr(now, k) - self._io_base.get(k, 0) for k in
              ("read_seconds", "bytes_read", "bytes_written", "write_seconds")}
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
        self.pager.reset_stats()
        io = self.storage.io_stats()
        self._io_base = {k: getattr(io, k) for k in ("read_seconds", "bytes_read", "bytes_written", "write_seconds")}

    def files(self) -> list[str]:
        return list(self.storage.files())

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
        self.pager.stop()
        if restore:
            self.storage.restore_all()
        else:
            self.storage.remove_files()
        if self.private_dir:
            shutil.rmtree(self.private_dir, ignore_errors=True)


def handle_of(model: nn.Module) -> OffloadHandle | None:
    """The offload handle of a model wrapped for inference, else None."""
    return hooks.handle_of(model, OffloadHandle)


def _weight_homes(units: list[PagingUnit], tiers: TierPolicy, cuda: bool) -> list[str]:
    """Home tier of each unit while it is not resident.

    CPU-only: disk (RAM is the device). CUDA: the weights split's cpu share of the
    off-device weights lives in pinned host memory, the disk share in files.
    """
    if not cuda:
        return ["disk"] * len(units)
    off_device = tiers.weights.cpu + tiers.weights.disk
    host_share = tiers.weights.cpu / off_device if off_device > 0 else 1.0
    n_host = round(len(units) * host_share)
    return ["host"] * n_host + ["disk"] * (len(units) - n_host)


def _check_budget(cfg: Config, policy: Any, weight_bytes: int) -> None:
    budget = cfg.memory_budget
    if policy.policy == "none":
        if isinstance(budget, int) and weight_bytes > budget:
            raise ConfigError(
                f"offload.policy: \"none\" keeps all weights resident, but they take {weight_bytes} bytes "
                f"({format_bytes(weight_bytes)}) and memory_budget is {budget} ({format_bytes(budget)}); use "
                "offload={\"policy\": \"budget\" or \"pinned_hot_set\", \"ram_bytes\": ...}")
        return
    if isinstance(budget, int) and policy.ram_bytes > budget:
        raise ConfigError(f"offload.ram_bytes: got {policy.ram_bytes} ({format_bytes(policy.ram_bytes)}), more than "
                          f"memory_budget {budget} ({format_bytes(budget)}); resident weights must fit inside the budget")


def wrap_for_inference(model: nn.Module, config: Config | dict[str, Any], example_inputs: tuple | None = None,
                       *, plan: Any = None, calibration: Any = None, file_format: str = "safetensors",
                       drop_page_cache: bool = True) -> nn.Module:
    """Page ``model``'s weights per ``config.offload``; returns the same module.

    ``example_inputs`` (positional args of ``forward``, ideally of the generation's batch
    and total length) fix the execution order the prefetch follows and let the decision
    engine plan (:mod:`memscale.runtime.inference.plan_view`): with ``offload.policy`` "none" the
    engine decides whether and how much to page, and it fills the KV-cache / activation
    tier splits ``Config.tiers`` leaves open. ``plan`` gives a ready inference plan;
    ``calibration`` (``memscale.calibrate_reservation``) refines its reservation.
    Raises ConfigError (nothing written, model untouched) for a policy, budget or
    directory that cannot work, InfeasibleBudgetError when the engine finds no plan.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model: got {type(model).__name__}, expected a torch.nn.Module")
    if hooks.handle_of(model) is not None:
        raise MemScaleError("model is already wrapped; unwrap it first (memscale.unwrap(model))")
    cfg = as_config(config)
    policy = _C.OffloadPolicy.from_json(json.dumps(cfg.offload))
    units = paging_units(model, example_inputs)
    weight_bytes = sum(u.bytes for u in units)
    if policy.policy != "none":
        _check_budget(cfg, policy, weight_bytes)
    if plan is None and needs_plan(cfg, policy):
        try:
            plan = inference_plan(model, cfg, example_inputs, calibration)
        except ConfigError as error:
            if policy.policy == "none":
                raise
            # The user fixed the pager's settings; the engine only fills open tier splits.
            # Where its stricter model rejects those settings (e.g. a prefetch window it
            # counts as always resident), the pager still runs them: it drops prefetches
            # that do not fit. The splits then come from Config.tiers and the defaults.
            log.warning("offloaded inference: no engine plan for the tier splits (%s); using Config.tiers", error)
    if policy.policy == "none" and plan is not None:
        policy = policy_from_plan(cfg, plan)
    _check_budget(cfg, policy, weight_bytes)
    if policy.policy == "none":
        log.info("offload.policy none: all %s of weights stay resident; nothing is paged", format_bytes(weight_bytes))
        return model
    cuda = any(p.is_cuda for u in units for p in u.params.values())
    tiers = tier_policy(cfg, plan)
    homes = _weight_homes(units, tiers, cuda)
    kept = device_layers(plan)
    specs = [(u.name, u.kind, u.bytes, h, u.name in kept) for u, h in zip(units, homes)]
    _C.validate_pager_layout(specs, policy)  # budget vs hot set, single layer vs budget
    hot = _C.pager_hot_set(specs, policy)
    private_dir = None
    disk_dir = policy.disk_dir
    storage = None
    try:
        if not disk_dir:
            disk_dir = private_dir = tempfile.mkdtemp(prefix="memscale-weights-")
        storage = _C.TorchPagerStorage(disk_dir, file_format, 16 << 20, drop_page_cache)
        for u, home in zip(units, homes):
            names = list(u.params)
            storage.add_layer(u.name, names, [u.params[n].detach() for n in names], home)
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
    handle.kv_hook = _install_kv_hook(model, tiers, storage.dir)
    handle.model = weakref.ref(model)
    hooks.register(model, handle)
    _live.add(handle)
    # The pager just freed the resident copy of every paged unit: glibc keeps freed heap
    # pages in the process unless told to return them, and those frees raised its mmap
    # threshold so later activations would stay resident too (heap.py).
    if not cuda:
        pin_mmap_threshold()
        release_freed_memory()
        # What a forward (a decoding step) frees goes back too: the heap holds the freed
        # weights' space, which activations reuse and would otherwise leave resident.
        handle.hooks.add(model, _nothing, _release_after_forward)
    log.info("offloaded inference: %d units, %d pinned (%s, of which %s kept on the device by the plan), "
             "weights %s, ram_bytes %s, files in %s", len(units), sum(hot.pinned), format_bytes(hot.pinned_bytes),
             format_bytes(hot.planned_bytes), format_bytes(weight_bytes), format_bytes(policy.ram_bytes), storage.dir)
    return model


def _nothing() -> None:
    pass


def _release_after_forward() -> None:
    release_freed_memory()  # its result must not become the forward's output


def _install_kv_hook(model: nn.Module, tiers: TierPolicy, disk_dir: str) -> Any:
    """A Hugging Face causal LM's calls (``model.generate`` included) get a KV cache on the
    policy's tiers (:mod:`memscale.runtime.inference.hf_cache`); None for other models."""
    try:
        from . import hf_cache
    except ImportError:  # transformers is not installed: no Hugging Face model to serve
        return None
    hook = hf_cache.install(model, tiers, disk_dir)
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
