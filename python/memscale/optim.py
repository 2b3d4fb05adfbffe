"""Optimizers for training below the static floor.

``offloaded(opt)`` wraps the torch optimizer the user created so its state (and, with
``gradients=True``, the gradients) lives on the next tier — the disk on a CPU-only
machine, pinned host memory on CUDA — and only a window of it is resident during the
step (docs/training-offload.md).

Example:
    >>> import tempfile, torch
    >>> import memscale.optim
    >>> model = torch.nn.Linear(8, 8)
    >>> opt = memscale.optim.offloaded(torch.optim.AdamW(model.parameters(), lr=1e-3),
    ...                                directory=tempfile.mkdtemp())
    >>> model(torch.randn(2, 8)).sum().backward()
    >>> opt.step(); opt.zero_grad()
    >>> sorted(opt.tier.keys())
    ['state-0', 'state-1']
    >>> inner = opt.close()
"""
from __future__ import annotations

import os
import torch

from .runtime.training.offload_optimizer import OffloadedOptimizer


def offloaded(opt: torch.optim.Optimizer, *, tier: str = "auto",
              directory: str | os.PathLike[str] | None = None, gradients: bool = False,
              window_bytes: int | None = None, prefetch: bool = True) -> OffloadedOptimizer:
    """``opt`` with its state on the next tier (see :class:`OffloadedOptimizer` for the
    arguments). Fails before changing anything when the tier's directory is missing and
    cannot be created, read-only or too small."""
    return OffloadedOptimizer(opt, tier=tier, directory=directory, gradients=gradients,
                              window_bytes=window_bytes, prefetch=prefetch)


__all__ = ["OffloadedOptimizer", "offloaded"]
