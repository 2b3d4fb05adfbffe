"""Storage of one KV-cache layer's rows on device / host / disk (:class:`TierRows`), used
by :class:`memscale.runtime.inference.hf_cache.TieredCache`.

Layout: time-major ``(max_len, batch, heads, head_dim)`` per layer for K and for V, so a
decoding step appends one contiguous block of rows (one ``pwrite`` on disk) and reading
the cache back is one sequential read of a prefix.

Disk files are raw bytes (never pickle), created exclusively with mode 0600, and removed
by ``close()``.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile

import torch

from ... import _C


class DiskRows:
    """A raw file of fixed-size rows, written at row offsets and read back as a prefix."""

    def __init__(self, directory: str, name: str, row_bytes: int, max_rows: int) -> None:
        self.path = os.path.join(directory, name)
        self.row_bytes = row_bytes
        self.max_rows = max_rows
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.fchmod(self.fd, 0o600)
        self.bytes_read = 0
        self.bytes_written = 0

    def write(self, row: int, rows: torch.Tensor) -> None:
        data = rows.detach().to("cpu").contiguous().view(torch.uint8).numpy()
        if row * self.row_bytes + data.nbytes > self.max_rows * self.row_bytes:
            raise ValueError(f"{self.path}: rows {row}.. exceed the {self.max_rows} reserved")
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], row * self.row_bytes + done)
        self.bytes_written += done

    def read(self, n_rows: int, out: torch.Tensor) -> torch.Tensor:
        """Reads the first ``n_rows`` rows into the CPU tensor ``out`` (its byte size must match)."""
        view = memoryview(out.view(torch.uint8).numpy()).cast("B")
        want = n_rows * self.row_bytes
        if len(view) != want:
            raise ValueError(f"{self.path}: buffer of {len(view)} bytes for {want}")
        done = 0
        while done < want:
            got = os.preadv(self.fd, [view[done:]], done)
            if got <= 0:
                raise OSError(f"{self.path}: short read at {done} of {want} bytes")
            done += got
        self.bytes_read += done
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            os.unlink(self.path)


def _host_buffer(shape: tuple[int, ...], dtype: torch.dtype, cuda: bool) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, pin_memory=cuda)


class ScratchDir:
    """The directory for scratch files: the given one (checked), else a private temp dir."""

    def __init__(self, directory: str | None, required_bytes: int) -> None:
        self.private = not directory
        self.path = tempfile.mkdtemp(prefix="memscale-kv-") if self.private else os.path.abspath(directory)
        try:
            _C.check_disk_dir(self.path, required_bytes, shutil.disk_usage(self.path).free
                              if os.path.isdir(self.path) else None)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.private:
            shutil.rmtree(self.path, ignore_errors=True)


class TierRows:
    """One tensor's rows, time-major ``(t, *row_shape)``, on one tier; grows on demand.

    ``tier`` is "device" (a buffer on ``device``), "host" (pinned host memory on CUDA) or
    "disk" (a :class:`DiskRows` file in ``scratch``). ``prefix(t)`` hands back the first
    ``t`` rows on ``device``: a view on the device tier, a fresh copy otherwise.
    """

    def __init__(self, tier: str, row_shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                 capacity: int, scratch: "ScratchDir | None" = None, name: str = "") -> None:
        if tier not in ("device", "host", "disk"):
            raise ValueError(f"tier: got {tier!r}, expected 'device', 'host' or 'disk'")
        self.tier = tier
        self.row_shape = tuple(row_shape)
        self.dtype = dtype
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.row_bytes = math.prod(self.row_shape) * torch.empty((), dtype=dtype).element_size()
        self.capacity = max(1, int(capacity))
        self.length = 0
        self.buf: torch.Tensor | DiskRows | None = None
        if tier == "disk":
            if scratch is None:
                raise ValueError("tier 'disk' needs a scratch directory")
            self.buf = DiskRows(scratch.path, name, self.row_bytes, self.capacity)
        else:
            self.buf = self._alloc(self.capacity)

    def _alloc(self, rows: int) -> torch.Tensor:
        shape = (rows, *self.row_shape)
        if self.tier == "host":
            return _host_buffer(shape, self.dtype, self.cuda)
        return torch.empty(shape, dtype=self.dtype, device=self.device)

    def _reserve(self, rows: int) -> None:
        if rows <= self.capacity:
            return
        grown = max(rows, 2 * self.capacity)
        if isinstance(self.buf, DiskRows):
            self.buf.max_rows = grown  # the file grows as rows are written
        else:
            bigger = self._alloc(grown)
            bigger[:self.length].copy_(self.buf[:self.length])
            self.buf = bigger
        self.capacity = grown

    def append(self, rows: torch.Tensor) -> None:
        """Appends ``rows`` of shape ``(n, *row_shape)`` after the rows already held."""
        n = rows.shape[0]
        self._reserve(self.length + n)
        if isinstance(self.buf, DiskRows):
            self.buf.write(self.length, rows)
        else:
            self.buf[self.length:self.length + n].copy_(rows)
        self.length += n

    def truncate(self, rows: int) -> None:
        self.length = max(0, min(self.length, rows))

    def prefix(self, rows: int | None = None) -> torch.Tensor:
        """The first ``rows`` rows (all when None), on the device."""
        t = self.length if rows is None else rows
        if isinstance(self.buf, DiskRows):
            out = self.buf.read(t, _host_buffer((t, *self.row_shape), self.dtype, self.cuda))
            return out.to(self.device) if self.cuda else out
        if self.tier == "host" and self.cuda:
            return self.buf[:t].to(self.device)
        return self.buf[:t]

    def file(self) -> str | None:
        return self.buf.path if isinstance(self.buf, DiskRows) and self.buf.fd >= 0 else None

    def close(self) -> None:
        if isinstance(self.buf, DiskRows):
            self.buf.close()
        self.buf = None
