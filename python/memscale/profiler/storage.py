"""Bytes of tensors, counted once per storage: the one helper every layer uses.

A storage is identified by its StorageImpl (``_cdata``) while it is alive, so views,
tied weights and fake/meta tensors (whose data pointers are all 0) are told apart
correctly.

Example:
    >>> import torch
    >>> from memscale.profiler.storage import storage_bytes, tensor_bytes
    >>> w = torch.zeros(4, 4)
    >>> storage_bytes([w, w[0], w.t()])
    64
    >>> tensor_bytes((w, [w[0]]))
    80
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch.utils._pytree import tree_leaves


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This process's part of a tensor: a DTensor's local shard (FSDP2), else ``t`` itself.
    A DTensor's own storage is not this rank's memory."""
    return t.to_local() if hasattr(t, "to_local") else t


def storage_key(t: torch.Tensor) -> int:
    """Identity of a tensor's storage while it is alive (address of the StorageImpl)."""
    return t.untyped_storage()._cdata


def storage_nbytes(t: torch.Tensor) -> int:
    """Bytes of the whole storage behind ``t`` (a view counts its base's storage)."""
    return t.untyped_storage().nbytes()


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen: dict[int, int] = {}
    for t in tensors:
        seen.setdefault(storage_key(t), storage_nbytes(t))
    return sum(seen.values())


def tensor_bytes(obj: Any) -> int:
    """Logical bytes (numel x element size) of the distinct tensors in a nested structure."""
    seen: set[int] = set()
    total = 0
    for t in tree_leaves(obj):
        if isinstance(t, torch.Tensor) and id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total
