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
        self.length = [0] * n_layers
        disk_layers = [i for i, t in enumerate(tiers) if t == "disk"]
        self.scratch = ScratchDir(disk_dir, 2 * len(disk_layers) * self.row_bytes * max_len) if disk_layers else None
        self.bufs: list[tuple[object, object]] = []
        try:
            for i, tier in enumerate(tiers):
                shape = (max_len, *self.row_shape)
                if tier == "device":
                    self.bufs.append((torch.empty(shape, dtype=dtype, device=self.device),
                                      torch.empty(shape, dtype=dtype, device=self.device)))
                elif tier == "host":
                    self.bufs.append((_host_buffer(shape, dtype, self.cuda), _host_buffer(shape, dtype, self.cuda)))
                elif tier == "disk":
                    tag = f"{os.getpid()}-{id(self)}-{i}"
                    self.bufs.append((DiskRows(self.scratch.path, f"memscale-kv-{tag}-k.bin", self.row_bytes, max_len),
                                      DiskRows(self.scratch.path, f"memscale-kv-{tag}-v.bin", self.row_bytes, max_len)))
                else:
                    raise ValueError(f"tiers[{i}]: got {tier!r}, expected 'device', 'host' or 'disk'")
        except BaseException:
            self.close()
            raise

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Appends ``k``, ``v`` of shape (batch, heads, new, head_dim)."""
        t0 = self.length[layer]
        n = k.shape[2]
        if t0 + n > self.max_len:
            raise ValueError(f"KV cache of layer {layer} holds {self.max_len} tokens; {t0 + n} requested")
        for buf, x in zip(self.bufs[layer], (k, v)):
            rows = x.permute(2, 0, 1, 3)
            if isinstance(buf, DiskRows):
                buf.write(t0, rows)
            else:
                buf[t0:t0 + n].copy_(rows)
        self.length[layer] = t0 + n

    def get(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V of shape (batch, heads, t, head_dim), as the same strided view on every tier."""
        t = self.length[layer]
        out = []
        for buf in self.bufs[layer]:
            if isinstance(buf, DiskRows):
                rows = buf.read(t, _host_buffer((t, *self.row_shape), self.dtype, self.cuda))
                rows = rows.to(self.device) if self.cuda else rows
            elif self.tiers[layer] == "host" and self.cuda:
                rows = buf[:t].to(self.device)
            else:
                rows = buf[:t]
            out.append(rows.permute(1, 2, 0, 3))
        return out[0], out[1]

    def bytes_by_tier(self) -> dict[str, int]:
        """Reserved bytes per tier (K and V, full length)."""
        per_layer = 2 * self.row_bytes * self.max_len
        return {t: per_layer * self.tiers.count(t) for t in ("device", "host", "disk")}

    def files(self) -> list[str]:
        return [b.path for pair in self.bufs for b in pair if isinstance(b, DiskRows) and b.fd >= 0]

    def close(self) -> None:
        for pair in self.bufs:
            for b in pair:
                if isinstance(b, DiskRows):
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
