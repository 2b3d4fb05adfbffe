"""The next tier for training state (optimizer state, gradients): records of named tensors
kept off the compute device, written and read back on background threads.

A *record* is what one key holds: a dict of tensors (and plain values, kept in memory
beside it). Two tiers:

* ``disk`` (a CPU-only machine): one raw file per record (the tensors' bytes, each at a
  64-byte aligned offset; never pickle), created exclusively with mode 0600 in a private
  directory (mode 0700, ``mkdtemp``) under the checked offload directory, rewritten in
  place on every store and removed by ``close()``. A record read back is one uint8 buffer
  and the tensors are views of it, so it costs exactly its bytes.
* ``host`` (CUDA): one pinned host buffer per record, allocated at its first store;
  device-to-host and host-to-device copies run on a side stream, and the consumer's
  stream waits on an event, so transfers overlap compute.

Writes run on one writer thread and reads on one reader thread (``prefetch`` starts a
read, ``load`` waits for it or reads now); a read of a key waits for that key's pending
write, so a record is never read half written. ``wait_writes`` bounds what is in flight.
A write that fails (disk full, directory removed) loses nothing: the record stays in memory,
``load`` returns it, ``take_write_errors`` reports the failure and the next store retries.

Example:
    >>> import tempfile, torch
    >>> from memscale.runtime.training.state_tier import StateTier
    >>> tier = StateTier("disk", tempfile.mkdtemp())
    >>> tier.store("p0", {"exp_avg": torch.ones(3), "step": torch.tensor(2.0), "beta": 0.9})
    >>> back = tier.load("p0")
    >>> back["exp_avg"].tolist(), float(back["step"]), back["beta"]
    ([1.0, 1.0, 1.0], 2.0, 0.9)
    >>> tier.close()
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("memscale")

#: Offsets of tensors inside a record: aligned so every dtype's view of the buffer is legal.
ALIGN = 64

TIERS = ("disk", "host")


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def record_bytes(tensor_bytes: list[int]) -> int:
    """Bytes one record takes on its tier, for tensors of these sizes (alignment included)."""
    return sum(_aligned(n) for n in tensor_bytes)


@dataclass(frozen=True)
class _Slot:
    name: str
    dtype: torch.dtype
    shape: torch.Size
    device: torch.device
    offset: int
    nbytes: int


class _Layout:
    """Where each tensor of a record lies in its file / pinned buffer, plus the plain values."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.slots: list[_Slot] = []
        self.plain: dict[str, Any] = {}
        offset = 0
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                nbytes = value.numel() * value.element_size()
                self.slots.append(_Slot(name, value.dtype, value.shape, value.device, offset, nbytes))
                offset += _aligned(nbytes)
            else:
                self.plain[name] = value
        self.total = offset
        self.order = list(values)

    def matches(self, values: dict[str, Any]) -> bool:
        tensors = [(k, v) for k, v in values.items() if isinstance(v, torch.Tensor)]
        return len(tensors) == len(self.slots) and all(
            s.name == k and s.dtype == v.dtype and s.shape == v.shape and s.device == v.device
            for s, (k, v) in zip(self.slots, tensors))


def _u8(t: torch.Tensor) -> torch.Tensor:
    """The bytes of a tensor as a flat uint8 tensor (a view when it is contiguous)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


class StateTier:
    """Records of tensors on ``tier`` (``disk`` or ``host``); see the module docstring.

    ``directory`` (disk tier) must already have passed ``check_offload_dir``.
    """

    def __init__(self, tier: str, directory: str | os.PathLike[str] | None = None,
                 prefix: str = "memscale-train-") -> None:
        if tier not in TIERS:
            raise ValueError(f"tier: {tier!r} is not one of {list(TIERS)}")
        if tier == "disk" and directory is None:
            raise ValueError("tier 'disk' needs a directory")
        if tier == "host" and not torch.cuda.is_available():
            raise ValueError("tier 'host' (pinned host memory) needs CUDA; use 'disk' on a CPU-only machine")
        self.tier = tier
        self.dir = Path(tempfile.mkdtemp(prefix=prefix, dir=directory)) if tier == "disk" else None
        self._layouts: dict[str, _Layout] = {}
        self._pinned: dict[str, torch.Tensor] = {}
        self._events: dict[str, Any] = {}
        self._writes: dict[str, cf.Future[None]] = {}
        self._reads: dict[str, cf.Future[Any]] = {}
        self._read_box: dict[str, dict[str, Any]] = {}
        self._kept: dict[str, tuple[dict[str, Any], int]] = {}  # records whose write failed
        self._errors: list[str] = []
        self._writer = cf.ThreadPoolExecutor(1, thread_name_prefix="memscale-state-write")
        self._reader = cf.ThreadPoolExecutor(1, thread_name_prefix="memscale-state-read")
        self._stream = torch.cuda.Stream() if tier == "host" else None
        self._lock = threading.Lock()
        self.bytes_written = 0
        self.bytes_read = 0
        self.read_seconds = 0.0  # disk tier: time spent reading, on whichever thread
        self.read_wait_seconds = 0.0  # time load() blocked on a read (not hidden by prefetch)
        self.closed = False

    # -- queries -----------------------------------------------------------------------
    def __contains__(self, key: str) -> bool:
        return key in self._layouts

    def keys(self) -> list[str]:
        return list(self._layouts)

    def stored_bytes(self) -> int:
        return sum(layout.total for layout in self._layouts.values())

    def kept_bytes(self) -> int:
        """Bytes of records held in memory because their write failed."""
        with self._lock:
            return sum(n for _, n in self._kept.values())

    def take_write_errors(self) -> list[str]:
        """The write failures since the last call (path: reason), cleared."""
        with self._lock:
            errors, self._errors = self._errors, []
        return errors

    def hidden_read_share(self) -> float | None:
        """Disk tier: the share of read time the consumer did not wait for (1.0: every
        read was done ahead by prefetch; 0.0: every read was waited for). None before any
        read, and on the host tier (its copies are asynchronous on a stream)."""
        if self.tier != "disk" or self.read_seconds <= 0.0:
            return None
        return min(1.0, max(0.0, 1.0 - self.read_wait_seconds / self.read_seconds))

    def _path(self, key: str) -> Path:
        assert self.dir is not None
        return self.dir / f"{key}.bin"

    # -- store ---------------------------------------------------------------------------
    def store(self, key: str, values: dict[str, Any]) -> None:
        """Write ``values`` as the record of ``key`` (in the background); the caller may
        drop its references at once: the writer keeps the tensors alive until written."""
        self._check_open()
        self.wait_write(key)
        layout = self._layouts.get(key)
        if layout is None or not layout.matches(values):
            layout = _Layout(values)
        first = key not in self._layouts
        self._layouts[key] = layout
        tensors = [values[s.name] for s in layout.slots]
        if self.tier == "host":
            self._store_host(key, layout, tensors)
            return
        # The tensors travel in a box the writer empties: a finished work item of the
        # thread pool may outlive its future's result briefly, and must not keep them alive.
        self._writes[key] = self._writer.submit(self._write_file, key, self._path(key), layout, [tensors], first)

    def _write_file(self, key: str, path: Path, layout: _Layout, box: list[list[torch.Tensor]],
                    first: bool) -> None:
        tensors = box.pop()
        # O_EXCL on the first write: the private directory holds only files made here.
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if first else 0)
        try:
            fd = os.open(path, flags, 0o600)
            try:
                for slot, t in zip(layout.slots, tensors):
                    if slot.nbytes:
                        data = _u8(t.cpu() if t.device.type != "cpu" else t)
                        view = memoryview(data.numpy())
                        done = 0
                        while done < slot.nbytes:
                            done += os.pwrite(fd, view[done:], slot.offset + done)
                os.ftruncate(fd, layout.total)
            finally:
                os.close(fd)
        except OSError as exc:
            # Nothing is lost: the record stays in memory (load() returns it) and the
            # failure is reported by take_write_errors(); the next store tries again.
            kept = dict(layout.plain)
            kept.update({slot.name: t for slot, t in zip(layout.slots, tensors)})
            with self._lock:
                self._kept[key] = ({k: kept[k] for k in layout.order}, layout.total)
                self._errors.append(f"{path}: {exc.strerror or exc}")
            log.warning("training state: writing %s failed (%s); kept in memory", path, exc)
            return
        with self._lock:
            self._kept.pop(key, None)
            self.bytes_written += layout.total

    def _store_host(self, key: str, layout: _Layout, tensors: list[torch.Tensor]) -> None:
        buf = self._pinned.get(key)
        if buf is None or buf.numel() != layout.total:
            buf = torch.empty(layout.total, dtype=torch.uint8, pin_memory=True)
            self._pinned[key] = buf
        assert self._stream is not None
        self._stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._stream):
            for slot, t in zip(layout.slots, tensors):
                if slot.nbytes:
                    buf[slot.offset:slot.offset + slot.nbytes].copy_(_u8(t), non_blocking=True)
                    if t.is_cuda:
                        t.record_stream(self._stream)  # the device block lives until copied
            event = torch.cuda.Event()
            event.record(self._stream)
        self._events[key] = event
        self.bytes_written += layout.total

    # -- load ----------------------------------------------------------------------------
    def prefetch(self, key: str) -> None:
        """Start reading ``key`` on the reader thread (no-op if absent or already started)."""
        self._check_open()
        if key not in self._layouts or key in self._reads:
            return
        if self.tier == "host":
            self._reads[key] = self._done(self._load_host(key))
            return
        self._reads[key] = self._reader.submit(self._read_into_box, key)

    def _read_into_box(self, key: str) -> None:
        # Returned through a dict, not the future: see store() on finished work items.
        values = self._read_file(key)
        with self._lock:
            self._read_box[key] = values

    @staticmethod
    def _done(value: dict[str, Any]) -> cf.Future[dict[str, Any]]:
        fut: cf.Future[dict[str, Any]] = cf.Future()
        fut.set_result(value)
        return fut

    def load(self, key: str) -> dict[str, Any]:
        """The record of ``key`` as fresh tensors on their original devices (the prefetched
        one when ``prefetch`` ran). A missing key is a KeyError."""
        self._check_open()
        if key not in self._layouts:
            raise KeyError(key)
        fut = self._reads.pop(key, None)
        if self.tier == "disk":
            start = time.perf_counter()
            try:
                if fut is None:
                    return self._read_file(key)
                fut.result()
                with self._lock:
                    return self._read_box.pop(key)
            finally:
                self.read_wait_seconds += time.perf_counter() - start
        values = fut.result() if fut is not None else self._load_host(key)
        current = torch.cuda.current_stream()
        current.wait_event(self._events[f"{key}/read"])
        for v in values.values():
            if isinstance(v, torch.Tensor) and v.is_cuda:
                v.record_stream(current)  # allocated on the side stream, used (and freed) here
        return values

    def _read_file(self, key: str) -> dict[str, Any]:
        self.wait_write(key)
        with self._lock:
            kept = self._kept.get(key)  # stays until a store writes it
        if kept is not None:
            return dict(kept[0])
        start = time.perf_counter()
        layout = self._layouts[key]
        buf = torch.empty(layout.total, dtype=torch.uint8)
        path = self._path(key)
        with open(path, "rb", buffering=0) as f:
            got = f.readinto(memoryview(buf.numpy())) if layout.total else 0
        if got != layout.total:
            raise OSError(f"training state file {str(path)!r}: read {got} of {layout.total} bytes")
        with self._lock:
            self.bytes_read += layout.total
            self.read_seconds += time.perf_counter() - start
        return self._views(layout, buf)

    def _load_host(self, key: str) -> dict[str, Any]:
        layout = self._layouts[key]
        buf = self._pinned[key]
        assert self._stream is not None
        out: dict[str, Any] = {}
        with torch.cuda.stream(self._stream):
            self._stream.wait_event(self._events[key])
            for slot in layout.slots:
                src = buf[slot.offset:slot.offset + slot.nbytes].view(slot.dtype).view(slot.shape)
                out[slot.name] = src.to(slot.device, non_blocking=True) if slot.device.type == "cuda" \
                    else src.clone()
            event = torch.cuda.Event()
            event.record(self._stream)
        self._events[f"{key}/read"] = event
        self.bytes_read += layout.total
        out.update(layout.plain)
        return {k: out[k] for k in layout.order}

    @staticmethod
    def _views(layout: _Layout, buf: torch.Tensor) -> dict[str, Any]:
        out: dict[str, Any] = dict(layout.plain)
        for slot in layout.slots:
            t = buf[slot.offset:slot.offset + slot.nbytes].view(slot.dtype).view(slot.shape)
            out[slot.name] = t if slot.device.type == "cpu" else t.to(slot.device)
        return {k: out[k] for k in layout.order}

    # -- lifetime ------------------------------------------------------------------------
    def discard(self, key: str) -> None:
        """Forget ``key`` (its file is kept for reuse until ``close``)."""
        self.wait_write(key)
        fut = self._reads.pop(key, None)
        if fut is not None:
            fut.result()
            with self._lock:
                self._read_box.pop(key, None)
        with self._lock:
            self._kept.pop(key, None)
        layout = self._layouts.pop(key, None)
        if layout is not None and self.dir is not None:
            self._path(key).unlink(missing_ok=True)
        self._pinned.pop(key, None)

    def wait_write(self, key: str) -> None:
        fut = self._writes.pop(key, None)
        if fut is not None:
            fut.result()
        event = self._events.get(key)
        if event is not None:
            event.synchronize()

    def wait_writes(self) -> None:
        """Every pending write done (errors raised here)."""
        for key in list(self._writes):
            self.wait_write(key)
        if self._stream is not None:
            self._stream.synchronize()

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("StateTier is closed")

    def close(self) -> None:
        """Stop the threads and remove every file and buffer (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)
        self._writes.clear()
        self._reads.clear()
        self._read_box.clear()
        self._kept.clear()
        self._layouts.clear()
        self._pinned.clear()
        self._events.clear()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
