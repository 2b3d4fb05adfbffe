"""KV cache and inter-layer activations placed on device / host / disk.

Layout: time-major ``(max_len, batch, heads, head_dim)`` per layer for K and for V, so a
decoding step appends one contiguous block of rows (one ``pwrite`` on disk) and reading
the cache back is one sequential read of a prefix. Every tier hands attention the same
strided view ``rows[:t].permute(1, 2, 0, 3)``: the arithmetic, hence the output, is
identical whatever the placement.

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


class KVCache:
    """K and V of each layer of a decoding batch, each layer on its tier.

    Args:
        tiers: per layer "device", "host" (pinned host memory; CUDA only) or "disk".
        disk_dir: directory of the disk tier's files (a private temp dir when None).
    """

    def __init__(self, n_layers: int, batch: int, heads: int, head_dim: int, max_len: int, dtype: torch.dtype,
                 device: torch.device, tiers: list[str], disk_dir: str | None = None) -> None:
        if len(tiers) != n_layers:
            raise ValueError(f"tiers: {len(tiers)} entries for {n_layers} layers")
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.row_shape = (batch, heads, head_dim)
        self.row_bytes = batch * heads * head_dim * torch.empty((), dtype=dtype).element_size()
        self.max_len = max_len
        self.dtype = dtype
        self.tiers = list(tiers)
        disk_layers = [i for i, t in enumerate(tiers) if t == "disk"]
        self.scratch = ScratchDir(disk_dir, 2 * len(disk_layers) * self.row_bytes * max_len) if disk_layers else None
        self.bufs: list[tuple[TierRows, TierRows]] = []
        try:
            for i, tier in enumerate(tiers):
                tag = f"{os.getpid()}-{id(self)}-{i}"
                self.bufs.append(tuple(TierRows(tier, self.row_shape, dtype, self.device, max_len, self.scratch,
                                                f"memscale-kv-{tag}-{kv}.bin") for kv in ("k", "v")))
        except BaseException:
            self.close()
            raise

    @property
    def length(self) -> list[int]:
        return [k.length for k, _ in self.bufs]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Appends ``k``, ``v`` of shape (batch, heads, new, head_dim)."""
        t0 = self.bufs[layer][0].length
        n = k.shape[2]
        if t0 + n > self.max_len:
            raise ValueError(f"KV cache of layer {layer} holds {self.max_len} tokens; {t0 + n} requested")
        for buf, x in zip(self.bufs[layer], (k, v)):
            buf.append(x.permute(2, 0, 1, 3))

    def get(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V of shape (batch, heads, t, head_dim), as the same strided view on every tier."""
        k, v = (buf.prefix().permute(1, 2, 0, 3) for buf in self.bufs[layer])
        return k, v

    def bytes_by_tier(self) -> dict[str, int]:
        """Reserved bytes per tier (K and V, full length)."""
        per_layer = 2 * self.row_bytes * self.max_len
        return {t: per_layer * self.tiers.count(t) for t in ("device", "host", "disk")}

    def files(self) -> list[str]:
        return [f for pair in self.bufs for b in pair if (f := b.file())]

    def close(self) -> None:
        for pair in self.bufs:
            for b in pair:
                b.close()
        self.bufs = []
        if self.scratch is not None:
            self.scratch.close()


class ActivationTiers:
    """Where the hidden state waits between layers: on its layer boundary's tier.

    ``park`` stores it and returns a token; ``fetch`` brings it back to the device. A
    boundary on the host or on disk keeps the device free of it while the next layer's
    weights are being made resident.
    """

    def __init__(self, tiers: list[str], device: torch.device, max_bytes: int, disk_dir: str | None = None) -> None:
        self.tiers = list(tiers)
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.scratch = ScratchDir(disk_dir, max_bytes) if "disk" in tiers else None
        self.file = (DiskRows(self.scratch.path, f"memscale-act-{os.getpid()}-{id(self)}.bin", 1, max_bytes)
                     if self.scratch is not None else None)

    def park(self, boundary: int, x: torch.Tensor) -> tuple[str, object, torch.Size, torch.dtype]:
        tier = self.tiers[boundary]
        if tier == "disk":
            self.file.write(0, x)
            return tier, None, x.shape, x.dtype
        if tier == "host" and self.cuda:
            return tier, x.to("cpu"), x.shape, x.dtype
        return "device", x, x.shape, x.dtype

    def fetch(self, token: tuple[str, object, torch.Size, torch.dtype]) -> torch.Tensor:
        tier, held, shape, dtype = token
        if tier == "disk":
            out = _host_buffer(tuple(shape), dtype, self.cuda)
            self.file.read(out.numel() * out.element_size(), out)
            return out.to(self.device) if self.cuda else out
        if tier == "host":
            return held.to(self.device)
        return held

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.scratch is not None:
            self.scratch.close()
