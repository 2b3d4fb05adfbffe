"""Per-layer activation offload through ``torch.autograd.graph.saved_tensors_hooks``.

While an offloaded layer's forward runs, every tensor autograd saves for backward goes
through this module's pack hook and comes back through its unpack hook:

* **host tier** (CUDA tensors): copied to pinned host memory on a side stream (an event
  marks completion; ``record_stream`` keeps the device block alive until the copy is
  done, so the device memory is released as soon as autograd drops it). In backward,
  the first unpack of a layer starts the host-to-device copies of the layer that runs
  next in backward (the one packed before it), so transfers overlap compute.
* **disk tier** (CPU-only machines, or CUDA with ``activation_tier == "disk"``): raw
  tensor bytes written to one file per storage (mode 0600, never pickle) by a writer
  thread, under a per-session subdirectory of the configured directory. A layer's
  writes are awaited at the end of its forward and its files are read when its backward
  unpacks them, so one layer's offloaded activations are in memory at a time, as the
  engine's memory model counts them (on a CPU-only machine the copies run on the cores
  the step computes on: overlapping them hides nothing, and two layers in flight measured
  above the plan). A file is deleted when autograd releases the
  saved tensor (right after its backward node ran, or when the graph is freed) and on
  ``close()``.

Kept as they are (not offloaded): tensors smaller than ``min_offload_bytes`` (default
``DEFAULT_MIN_OFFLOAD_BYTES`` = 0: the engine chose to offload the layer's saved bytes and
priced the transfers, so the runtime moves all of them; a floor here would keep bytes the
plan counted as gone, and the measured peak would pass the budget), storages of the model's parameters and buffers (they stay resident
anyway; offloading would only add a second copy in backward), non-strided, conjugate or
subclass tensors, and CPU tensors on the host tier (they already are in host memory).

A tensor is never copied twice in memory: saved tensors sharing a storage are written
once (per layer call) and unpacked as views of one reloaded storage; a tensor that is a
small view of a much larger storage is written alone.

Example (disk tier on a CPU-only machine):
    >>> import tempfile, torch
    >>> from memscale.runtime.training.offload_activations import ActivationStore
    >>> store = ActivationStore(directory=tempfile.mkdtemp(), min_offload_bytes=0)
    >>> lin = torch.nn.Linear(64, 64)
    >>> x = torch.randn(8, 64, requires_grad=True)
    >>> with store.layer("lin", tier="disk"):
    ...     y = torch.relu(lin(x))
    >>> y.sum().backward()
    >>> store.close()
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import itertools
import logging
import os
import shutil
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator

import torch


log = logging.getLogger("memscale")

#: Saved tensors smaller than this stay in memory (see module docstring). 0: every saved
#: tensor of an offloaded layer is moved, as the engine's plan counts it.
DEFAULT_MIN_OFFLOAD_BYTES = 0

_U8 = torch.uint8


def _as_bytes(storage: torch.UntypedStorage, device: torch.device) -> torch.Tensor:
    """A uint8 tensor viewing a whole storage (no copy)."""
    return torch.empty(0, dtype=_U8, device=device).set_(storage)


def _unlink_when_written(future: cf.Future[None] | None, path: str) -> None:
    """Remove a record's file now, or as soon as its pending write finishes."""
    def unlink(_: Any = None) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    if future is None or future.done():
        unlink()
    else:
        future.add_done_callback(unlink)


class _Group:
    """The tensors saved by one call of one offloaded layer."""

    def __init__(self, store: "ActivationStore", name: str, tier: str) -> None:
        self.store = store
        self.name = name
        self.tier = tier
        self.records: list[weakref.ref[_Record]] = []
        self.by_storage: dict[tuple[str, int], _Record] = {}  # dedupe, only while forward runs
        self.protected: set[int] = set()
        self.prefetch_started = False
        self.prev_triggered = False

    def forward_done(self) -> None:
        # The dedupe map (and the records' keep-alive of the original storages) only
        # matters while the forward runs: afterwards an address may be reused legally.
        self.by_storage.clear()
        for ref in self.records:
            rec = ref()
            if rec is not None:
                rec.keepalive = None

    def wait_written(self) -> None:
        for ref in self.records:
            rec = ref()
            if rec is not None:
                rec.wait_stored()

    def alive(self) -> bool:
        return any(ref() is not None for ref in self.records)

    def prefetch(self) -> None:
        if self.prefetch_started:
            return
        self.prefetch_started = True
        for ref in self.records:
            rec = ref()
            if rec is not None:
                rec.prefetch()


class _Record:
    """One offloaded storage (or standalone tensor copy), on the host or on disk."""

    def __init__(self, group: _Group, data: torch.Tensor) -> None:
        self.group = group  # strong: a group lives while any of its records does
        self.device = data.device
        self.nbytes = data.numel()
        self.keepalive: torch.Tensor | None = data
        self.unpacks_left = 0
        self.lock = threading.Lock()
        self.loaded: torch.Tensor | None = None
        self.load_future: cf.Future[torch.Tensor] | None = None
        self.stored: cf.Future[None] | None = None
        self.path: str | None = None
        self.host: torch.Tensor | None = None
        self.d2h_event: Any = None
        self.h2d_event: Any = None
        store = group.store
        if group.tier == "disk":
            self.path = str(store.session_dir() / f"{next(store.counter):08d}.bin")
            cpu = data if data.device.type == "cpu" else data.to("cpu")
            self.stored = store.writer().submit(_write_file, self.path, cpu)
            weakref.finalize(self, _unlink_when_written, self.stored, self.path)
        else:
            self._copy_to_host(data)

    # -- host tier (CUDA) ------------------------------------------------------------
    def _copy_to_host(self, data: torch.Tensor) -> None:
        stream = self.group.store.side_stream(data.device)
        self.host = torch.empty(self.nbytes, dtype=_U8, pin_memory=True)
        stream.wait_stream(torch.cuda.current_stream(data.device))
        with torch.cuda.stream(stream):
            self.host.copy_(data, non_blocking=True)
        # The caching allocator must not hand the device block to anyone else before
        # the side stream has read it, even if autograd frees it right away.
        data.record_stream(stream)
        self.d2h_event = torch.cuda.Event()
        self.d2h_event.record(stream)

    def _start_host_to_device(self) -> torch.Tensor:
        stream = self.group.store.side_stream(self.device)
        current = torch.cuda.current_stream(self.device)
        out = torch.empty(self.nbytes, dtype=_U8, device=self.device)
        stream.wait_stream(current)  # `out`'s allocation happened on the current stream
        stream.wait_event(self.d2h_event)
        with torch.cuda.stream(stream):
            out.copy_(self.host, non_blocking=True)
        out.record_stream(stream)
        self.h2d_event = torch.cuda.Event()
        self.h2d_event.record(stream)
        return out

    # -- common ----------------------------------------------------------------------
    def wait_stored(self) -> None:
        if self.stored is not None:
            self.stored.result()

    def prefetch(self) -> None:
        with self.lock:
            if self.loaded is not None or self.load_future is not None:
                return
            if self.path is not None:
                self.load_future = self.group.store.reader().submit(self._read)
            else:
                self.loaded = self._start_host_to_device()

    def _read(self) -> torch.Tensor:
        assert self.path is not None
        self.wait_stored()
        data = _read_file(self.path, self.nbytes)
        return data if self.device.type == "cpu" else data.to(self.device)

    def load(self) -> torch.Tensor:
        """The stored bytes, back on the original device (uint8, ``nbytes`` long)."""
        with self.lock:
            data, future = self.loaded, self.load_future
            self.load_future = None
        if data is None:
            if future is not None:
                data = future.result()
            elif self.path is not None:
                data = self._read()
            else:
                data = self._start_host_to_device()
        if self.h2d_event is not None:
            torch.cuda.current_stream(self.device).wait_event(self.h2d_event)
        with self.lock:
            self.unpacks_left -= 1
            # Keep the reloaded storage only while other views of it still await unpack,
            # so every view shares one copy; then autograd's reference is the only one.
            self.loaded = data if self.unpacks_left > 0 else None
        return data


class _Packed:
    """What autograd holds instead of a saved tensor: a record plus view geometry."""

    __slots__ = ("record", "dtype", "offset", "size", "stride")

    def __init__(self, record: _Record, dtype: torch.dtype, offset: int,
                 size: torch.Size, stride: tuple[int, ...]) -> None:
        self.record, self.dtype, self.offset, self.size, self.stride = (
            record, dtype, offset, size, stride)


def _write_file(path: str, data: torch.Tensor) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        if data.numel():
            f.write(memoryview(data.numpy()))


def _read_file(path: str, nbytes: int) -> torch.Tensor:
    out = torch.empty(nbytes, dtype=_U8)
    with open(path, "rb") as f:
        got = f.readinto(memoryview(out.numpy())) if nbytes else 0
    if got != nbytes:
        raise RuntimeError(f"offloaded activation file {path!r}: read {got} of {nbytes} bytes")
    return out


class ActivationStore:
    """One session of activation offload: tiers, threads, files and the layer order.

    ``directory`` is where the disk tier writes (a private subdirectory is made there on
    first use and removed by ``close()``); ``protected_storages`` returns the storage
    pointers that must never be offloaded (the model's parameters and buffers).
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None,
                 min_offload_bytes: int = DEFAULT_MIN_OFFLOAD_BYTES,
                 protected_storages: Callable[[], set[int]] | None = None) -> None:
        if min_offload_bytes < 0:
            raise ValueError(f"min_offload_bytes: {min_offload_bytes} is negative; expected >= 0")
        self.directory = Path(directory) if directory is not None else None
        self.min_offload_bytes = min_offload_bytes
        self._protected = protected_storages or (lambda: set())
        self.counter = itertools.count()
        self._session_dir: Path | None = None
        self._writer: cf.ThreadPoolExecutor | None = None
        self._reader: cf.ThreadPoolExecutor | None = None
        self._streams: dict[torch.device, Any] = {}
        self._groups: list[weakref.ref[_Group]] = []
        self._last_finished: _Group | None = None
        self._lock = threading.Lock()
        self._closed = False

    # -- resources, created lazily -------------------------------------------------
    def session_dir(self) -> Path:
        if self._session_dir is None:
            if self.directory is None:
                raise RuntimeError("disk tier used but ActivationStore has no directory")
            self._session_dir = Path(tempfile.mkdtemp(prefix="memscale-act-", dir=self.directory))
        return self._session_dir

    def writer(self) -> cf.ThreadPoolExecutor:
        if self._writer is None:
            self._writer = cf.ThreadPoolExecutor(1, thread_name_prefix="memscale-offload-write")
        return self._writer

    def reader(self) -> cf.ThreadPoolExecutor:
        if self._reader is None:
            self._reader = cf.ThreadPoolExecutor(1, thread_name_prefix="memscale-offload-read")
        return self._reader

    def side_stream(self, device: torch.device) -> Any:
        if device not in self._streams:
            self._streams[device] = torch.cuda.Stream(device=device)
        return self._streams[device]

    # -- hooks -----------------------------------------------------------------------
    @contextlib.contextmanager
    def layer(self, name: str, tier: str) -> Iterator[None]:
        """Offload what autograd saves inside this context to ``tier`` (``host``/``disk``)."""
        if tier not in ("host", "disk"):
            raise ValueError(f"tier: {tier!r} is not 'host' or 'disk'")
        if self._closed:
            raise RuntimeError("ActivationStore is closed")
        group = _Group(self, name, tier)
        group.protected = self._protected()
        with self._lock:
            self._groups = [g for g in self._groups if (h := g()) is not None and h.alive()]
            self._groups.append(weakref.ref(group))
        with torch.autograd.graph.saved_tensors_hooks(
                lambda t: self._pack(group, t), self._unpack):
            yield
        group.forward_done()
        if tier == "disk":
            # The engine counts one layer's offloaded bytes in memory at a time, and on a
            # CPU-only machine a write hides behind no compute (the cores are the same):
            # this layer's bytes are on disk before the next layer runs.
            group.wait_written()
        elif self._last_finished is not None and self._last_finished is not group:
            # Host tier (CUDA): this layer's copies overlap the next layer's forward on the
            # copy engine; the previous layer's must be done before we go on.
            self._last_finished.wait_written()
        self._last_finished = group

    def _eligible(self, group: _Group, t: torch.Tensor) -> bool:
        if type(t) not in (torch.Tensor, torch.nn.Parameter) or t.layout != torch.strided:
            return False
        if t.is_conj() or t.is_neg() or t.device.type == "meta":
            return False
        if group.tier == "host" and t.device.type != "cuda":
            return False
        if t.untyped_storage().data_ptr() in group.protected:
            return False
        return t.numel() * t.element_size() >= max(self.min_offload_bytes, 1)

    def _pack(self, group: _Group, t: torch.Tensor) -> Any:
        if not self._eligible(group, t):
            return t
        storage = t.untyped_storage()
        tensor_bytes = t.numel() * t.element_size()
        if tensor_bytes * 2 >= storage.nbytes():
            key = (str(t.device), storage.data_ptr())
            rec = group.by_storage.get(key)
            if rec is None:
                rec = _Record(group, _as_bytes(storage, t.device))
                group.by_storage[key] = rec
                group.records.append(weakref.ref(rec))
            packed = _Packed(rec, t.dtype, t.storage_offset(), t.size(), t.stride())
        else:
            # A small view of a big storage: write just the view, not the whole storage.
            alone = t.detach().clone(memory_format=torch.contiguous_format)
            rec = _Record(group, _as_bytes(alone.untyped_storage(), t.device))
            group.records.append(weakref.ref(rec))
            packed = _Packed(rec, t.dtype, 0, t.size(), alone.stride())
        with rec.lock:
            rec.unpacks_left += 1
        return packed

    def _unpack(self, packed: Any) -> torch.Tensor:
        if not isinstance(packed, _Packed):
            return packed
        rec = packed.record
        group = rec.group
        if not group.prev_triggered:
            group.prev_triggered = True
            previous = self._previous_group(group)
            if previous is not None and group.tier == "host":
                previous.prefetch()  # the layer backward reaches next (disk: one layer at a time)
        data = rec.load()
        return torch.empty(0, dtype=packed.dtype, device=data.device).set_(
            data.untyped_storage(), packed.offset, packed.size, packed.stride)

    def _previous_group(self, group: _Group) -> _Group | None:
        with self._lock:
            groups = [g for ref in self._groups if (g := ref()) is not None]
        for i, g in enumerate(groups):
            if g is group:
                for earlier in reversed(groups[:i]):
                    if earlier.alive():
                        return earlier
                return None
        return None

    # -- teardown --------------------------------------------------------------------
    def close(self) -> None:
        """Finish pending I/O, stop the threads and delete every file; idempotent."""
        if self._closed:
            return
        self._closed = True
        for pool in (self._writer, self._reader):
            if pool is not None:
                pool.shutdown(wait=True)
        if self._session_dir is not None:
            shutil.rmtree(self._session_dir, ignore_errors=True)
        self._groups.clear()
        self._last_finished = None
