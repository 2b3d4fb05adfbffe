"""Errors raised by the executor.

Every error is raised *before* a model is modified: ``apply_plan`` validates the
whole plan first, then applies it.

Example:
    >>> from memscale.executor.errors import ExecutorError
    >>> from memscale.errors import MemScaleError
    >>> issubclass(ExecutorError, MemScaleError) and issubclass(ExecutorError, ValueError)
    True
"""
from __future__ import annotations

from memscale.errors import MemScaleError


class ExecutorError(MemScaleError, ValueError):
    """A plan cannot be applied to this model (names the layer, value and what is allowed)."""


class OffloadDirError(ExecutorError):
    """The disk tier's directory is missing, not creatable, not writable or too small."""
