"""``memscale.track_memory(device)``: measured current and peak tensor bytes.

CPU: an exact counting allocator installed through c10 (``memscale._C.CountingSession``),
restored on exit; nested use works. CUDA: the caching allocator's statistics
(``torch.cuda.memory_allocated`` / ``max_memory_allocated``); nested trackers fold the peak
into their parents before an inner one resets the device's peak counter.

Example:
    >>> import torch, memscale
    >>> with memscale.track_memory("cpu") as t:
    ...     x = torch.empty(1024, dtype=torch.uint8)
    >>> t.peak_bytes
    1024
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from . import _C

_cuda_active: list["MemoryTracker"] = []


def _parse_device(device: torch.device | str | int) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N' (or a torch.device), got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be a cpu or cuda device, got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but torch has no CUDA device available")
        dev = torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)
    return dev


class MemoryTracker:
    """Figures of one ``track_memory`` scope, in bytes relative to its start.

    While the scope is open the properties read live values; after it closes they keep
    the final ones.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._session: _C.CountingSession | None = None
        self._cuda_base = 0
        self._cuda_peak_seen = 0
        self._final: tuple[int, int] | None = None

    # ---- CPU / CUDA backends -------------------------------------------------------
    def _start(self) -> None:
        if self.device.type == "cpu":
            self._session = _C.CountingSession()
            return
        torch.cuda.synchronize(self.device)
        for outer in _cuda_active:  # keep the parents' peaks before resetting the counter
            outer._cuda_peak_seen = max(outer._cuda_peak_seen, torch.cuda.max_memory_allocated(self.device))
        self._cuda_base = torch.cuda.memory_allocated(self.device)
        self._cuda_peak_seen = self._cuda_base
        torch.cuda.reset_peak_memory_stats(self.device)
        _cuda_active.append(self)

    def _read(self) -> tuple[int, int]:
        if self._final is not None:
            return self._final
        if self._session is not None:
            s = self._session.stats()
            return s.current_bytes, s.peak_bytes
        torch.cuda.synchronize(self.device)
        peak = max(self._cuda_peak_seen, torch.cuda.max_memory_allocated(self.device))
        return torch.cuda.memory_allocated(self.device) - self._cuda_base, peak - self._cuda_base

    def _stop(self) -> None:
        self._final = self._read()
        if self._session is not None:
            self._session.close()
            self._session = None
        elif self in _cuda_active:
            _cuda_active.remove(self)

    # ---- public ---------------------------------------------------------------------
    @property
    def current_bytes(self) -> int:
        """Bytes allocated minus bytes freed since the scope started."""
        return self._read()[0]

    @property
    def peak_bytes(self) -> int:
        """Highest ``current_bytes`` since the scope started (or the last :meth:`reset_peak`)."""
        return self._read()[1]

    def reset_peak(self) -> None:
        """Make the peak equal to the current bytes, to measure the peak of what follows."""
        if self._final is not None:
            raise RuntimeError("reset_peak() called on a closed track_memory scope")
        if self._session is not None:
            self._session.reset_peak()
            return
        torch.cuda.synchronize(self.device)
        for outer in _cuda_active:
            if outer is not self:
                outer._cuda_peak_seen = max(outer._cuda_peak_seen, torch.cuda.max_memory_allocated(self.device))
        torch.cuda.reset_peak_memory_stats(self.device)
        self._cuda_peak_seen = torch.cuda.memory_allocated(self.device)


@contextlib.contextmanager
def track_memory(device: torch.device | str | int = "cpu") -> Iterator[MemoryTracker]:
    """Measure tensor memory on ``device`` inside the ``with`` block (see module docstring)."""
    tracker = MemoryTracker(_parse_device(device))
    tracker._start()
    try:
        yield tracker
    finally:
        tracker._stop()
