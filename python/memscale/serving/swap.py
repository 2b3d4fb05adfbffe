"""A preempted request's KV cache on the next tier: pinned host memory on CUDA, a raw 0600
file of the offload directory on a CPU-only machine (one
:class:`memscale.runtime.inference.kv_cache.TierRows` per layer for K and for V, time-major)."""
from __future__ import annotations

from typing import Iterable

import torch

from ..runtime.inference.kv_cache import ScratchDir, TierRows
from .batch import LayerKV


class SwappedKV:
    """Holds ``kv`` (per layer ``(1, heads, t, d)``, taken one layer at a time) off the device
    until :meth:`restore`."""

    def __init__(self, kv: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device, scratch: ScratchDir | None, tag: str) -> None:
        self.tier = "host" if device.type == "cuda" else "disk"
        self.device = device
        self.rows: list[tuple[TierRows, TierRows]] = []
        self.bytes = 0
        for i, (k, v) in enumerate(kv):
            pair = tuple(TierRows(self.tier, (x.shape[0], x.shape[1], x.shape[3]), x.dtype, device, x.shape[2],
                                  scratch, f"memscale-swap-{tag}-{i}-{name}.bin") for name, x in (("k", k), ("v", v)))
            for rows, x in zip(pair, (k, v)):
                rows.append(x.permute(2, 0, 1, 3))
            self.rows.append(pair)  # type: ignore[arg-type]
            self.bytes += sum(x.numel() * x.element_size() for x in (k, v))
            del k, v

    def restore(self) -> LayerKV:
        """The cache back on the device; the tier's buffers and files are released."""
        kv = [tuple(r.prefix().to(self.device).permute(1, 2, 0, 3).contiguous() for r in pair) for pair in self.rows]
        self.close()
        return kv  # type: ignore[return-value]

    def close(self) -> None:
        for pair in self.rows:
            for r in pair:
                r.close()
        self.rows = []
