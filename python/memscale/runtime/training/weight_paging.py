"""Weight paging in training: a layer's weights resident only inside its window.

The plan's ``offload_weights`` layers (the engine pages them only with the optimizer state
and gradients offloaded: ``optimizer_offload.weights``) get a home copy on the next tier
(their ``weight_tier``: a safetensors file, mode 0600, on a CPU-only machine; pinned host
memory on CUDA) and are served by the inference pager's own C++ pieces
(``TorchPagerStorage`` + ``LayerPager``, the prefetch thread following the order it is
given): forward in execution order, backward in reverse order.

* Forward: a unit's forward pre-hook acquires it (the pager prefetches the next
  ``prefetch_n_ahead`` units), its post-hook releases it; with grad enabled it also hooks
  the unit's outputs (``register_multi_grad_hook``, as FSDP2's pre-backward hook does).
* Backward: the first gradient reaching a unit's outputs acquires it again (the order is
  reversed at the first one of a backward), releasing the unit acquired before it (whose
  backward has finished: autograd runs a sequential stack's later nodes first); the last
  one is released by a callback queued on the autograd engine at the end of backward
  (FSDP2's final callback).
* Saved tensors: autograd saves the parameter (or a view of it) for backward; it shares the
  parameter's storage, whose data pointer the storage swaps in place, so the saved tensor
  sees the re-materialized weights (FSDP2's approach: no copy, the version counter is not
  bumped). A checkpointed unit is recomputed inside its backward, after the pre-backward
  acquire, so its recompute reads resident weights too.
* Optimizer step: :class:`~.offload_optimizer.OffloadedOptimizer` calls :meth:`hold` with
  each window's parameters; the unit holding them is acquired, updated by the step and
  written home (``TorchPagerStorage.store``) before the step moves to another unit, and
  :meth:`end_update` writes the last one.

``remove()`` gives every parameter its memory back (the updated values) and deletes the
files. Example (see tests/python/test_training_weight_paging.py): ``memscale.wrap(model,
cfg, example_inputs=..., optimizer=opt, offload_optimizer=True)`` at a budget below the
offloaded optimizer's floor.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from typing import Any, Iterable

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from ... import _C
from ..._coerce import format_bytes
from ...errors import ExecutorError
from ..inference.heap import pin_mmap_threshold, release_freed_memory
from ..inference.units import PagingUnit, paging_units

log = logging.getLogger("memscale")


def _in_backward() -> bool:
    """True inside autograd's backward (a checkpoint's recompute runs forward there)."""
    return torch._C._current_graph_task_id() != -1


class TrainingPager:
    """Pages the weights of a training plan's ``offload_weights`` layers (module docstring)."""

    def __init__(self, model: nn.Module, plan_layers: list[Any], paged: dict[str, str],
                 prefetch_n_ahead: int, ram_bytes: int, directory: str | os.PathLike[str] | None) -> None:
        units = paging_units(model)
        order = {layer.name: i for i, layer in enumerate(plan_layers)}
        units.sort(key=lambda u: order.get(u.name, len(order)))
        by_name = {u.name: u for u in units}
        missing = [name for name in paged if name not in by_name]
        if missing:
            raise ExecutorError(f"plan layers {missing} offload weights but are no paging unit of "
                                f"{type(model).__name__} (layers without parameters, or tied to another layer)")
        self.units: list[PagingUnit] = units
        self.paged = [i for i, u in enumerate(units) if u.name in paged]
        specs = [(u.name, u.kind, u.bytes, paged.get(u.name, "disk"), u.name not in paged) for u in units]
        policy = _C.OffloadPolicy.from_json(
            '{"policy": "budget", "ram_bytes": %d, "prefetch_n_ahead": %d}' % (ram_bytes, prefetch_n_ahead))
        _C.validate_pager_layout(specs, policy)
        hot = _C.pager_hot_set(specs, policy)
        self.private_dir: str | None = None
        target = str(directory) if directory else None
        self.storage: Any = None
        try:
            if target is not None:
                os.makedirs(target, mode=0o700, exist_ok=True)
            # A private directory (mode 0700) for this model's files, removed with them.
            target = self.private_dir = tempfile.mkdtemp(prefix="memscale-train-weights-", dir=target)
            self.storage = _C.TorchPagerStorage(target, "safetensors", 16 << 20, True)
            for u, (_, _, _, home, _) in zip(units, specs):
                names = list(u.params)
                self.storage.add_layer(u.name, names, [u.params[n].detach() for n in names], home)
            required = self.storage.disk_bytes_required(hot.pinned)
            free = shutil.disk_usage(target).free if required > 0 else None
            self.storage.write_home_copies(hot.pinned, free)
            self.forward_order = list(range(len(units)))
            self.pager = _C.LayerPager(specs, policy, self.storage, order=self.forward_order, cyclic=False)
        except BaseException:
            if self.storage is not None:
                self.storage.restore_all()
            if self.private_dir:
                shutil.rmtree(self.private_dir, ignore_errors=True)
            raise
        self._unit_of = {id(p): i for i in self.paged for p in units[i].params.values()}
        self._lock = threading.Lock()
        self._direction = "forward"
        self._backward_held: int | None = None
        self._update_held: int | None = None
        self._stack = threading.local()
        self._handles: list[Any] = []
        for i in self.paged:
            for module in units[i].modules:
                self._handles.append(module.register_forward_pre_hook(lambda _m, _a, i=i: self._pre(i)))
                self._handles.append(module.register_forward_hook(
                    lambda _m, _a, out, i=i: self._post(i, out), always_call=True))
        self.closed = False
        if not any(p.is_cuda for i in self.paged for p in units[i].params.values()):
            pin_mmap_threshold()
            release_freed_memory()
        log.info("training weight paging: %d of %d units paged (%s), ram_bytes %s, prefetch %d ahead, files in %s",
                 len(self.paged), len(units), format_bytes(sum(units[i].bytes for i in self.paged)),
                 format_bytes(ram_bytes), prefetch_n_ahead, target)

    # -- direction -----------------------------------------------------------------------
    def _turn(self, direction: str) -> None:
        if self._direction != direction:
            self._direction = direction
            self.pager.set_order(self.forward_order if direction == "forward" else self.forward_order[::-1])

    # -- forward -------------------------------------------------------------------------
    def _held(self) -> list[int]:
        if not hasattr(self._stack, "held"):
            self._stack.held = []
        return self._stack.held

    def _pre(self, i: int) -> None:
        if not _in_backward():
            self._turn("forward")
        self.pager.acquire(i)
        self._held().append(i)

    def _post(self, i: int, output: Any) -> None:
        held = self._held()
        if held and held[-1] == i:  # only what this thread acquired (a failed acquire releases nothing)
            held.pop()
            self.pager.release(i)
        if output is None or not torch.is_grad_enabled() or _in_backward():
            return
        tensors = [t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor) and t.requires_grad]
        if tensors:
            torch.autograd.graph.register_multi_grad_hook(tensors, lambda _g, i=i: self._pre_backward(i), mode="any")

    # -- backward ------------------------------------------------------------------------
    def _pre_backward(self, i: int) -> None:
        with self._lock:
            first = self._backward_held is None
            if first:
                self._turn("backward")
                torch.autograd.Variable._execution_engine.queue_callback(self._end_backward)
            if self._backward_held == i:
                return
            previous, self._backward_held = self._backward_held, i
        if previous is not None:
            self.pager.release(previous)  # first: a pager with room for one unit must not wait on itself
        self.pager.acquire(i)

    def _end_backward(self) -> None:
        with self._lock:
            held, self._backward_held = self._backward_held, None
        if held is not None:
            self.pager.release(held)

    # -- optimizer step ------------------------------------------------------------------
    def begin_update(self) -> None:
        """The optimizer step starts: it visits the parameters in forward order."""
        self._turn("forward")

    def hold(self, params: Iterable[torch.Tensor]) -> None:
        """Make the units of ``params`` resident for the step (at most one unit at a time:
        the previous one is written home and released first)."""
        for p in params:
            i = self._unit_of.get(id(p))
            if i is None or i == self._update_held:
                continue
            self._finish_update()
            self.pager.acquire(i)
            self._update_held = i

    def end_update(self) -> None:
        """The step ended: the unit it updated last is written home and released."""
        self._finish_update()

    def _finish_update(self) -> None:
        if self._update_held is not None:
            held, self._update_held = self._update_held, None
            try:
                self.storage.store(held)
            finally:
                self.pager.release(held)

    # -- reporting and teardown ----------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Pager counters and tier I/O: bytes, seconds, the share of load time prefetch hid."""
        s, io = self.pager.stats(), self.storage.io_stats()
        return {"paged_units": len(self.paged), "budget_bytes": s.budget_bytes,
                "peak_resident_weight_bytes": s.peak_physical_bytes, "loads": s.loads,
                "prefetch_loads": s.prefetch_loads, "demand_loads": s.demand_loads,
                "bytes_loaded": s.bytes_loaded, "load_seconds": s.load_seconds,
                "acquire_wait_seconds": s.acquire_wait_seconds, "hidden_fraction": s.hidden_fraction,
                "disk_bytes_read": io.bytes_read, "disk_bytes_written": io.bytes_written,
                "disk_read_seconds": io.read_seconds, "disk_write_seconds": io.write_seconds}

    def evicted_bytes(self) -> int:
        """Bytes of the paged units not resident now (their parameters' storages point at
        the home copy)."""
        return sum(self.units[i].bytes for i in self.paged if self.pager.state(i) != "resident")

    def files(self) -> list[str]:
        return list(self.storage.files())

    def remove(self) -> None:
        """Hooks off, every parameter resident again with its updated values, files deleted."""
        if self.closed:
            return
        self.closed = True
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.pager.stop()
        self.storage.restore_all()
        if self.private_dir:
            shutil.rmtree(self.private_dir, ignore_errors=True)
        log.info("training weight paging: removed, weights resident, files deleted")
