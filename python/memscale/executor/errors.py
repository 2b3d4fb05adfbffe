"""Errors raised by the executor.

Every error is raised *before* a model is modified: ``apply_plan`` validates the
whole plan first, then applies it.

Example:
    >>> from memscale.executor.errors import ExecutorError
    >>> issubclass(ExecutorError, ValueError)
    True
"""
from __future__ import annotations

try:  # the core's hierarchy, once the extension module provides it
    from memscale._C import MemScaleError as _Base  # type: ignore[attr-defined]
except ImportError:  # extension not built yet: executor errors still form their own tree
    class _Base(Exception):  # type: ignore[no-redef]
        """Local root used only when ``memscale._C`` is unavailable."""


class ExecutorError(_Base, ValueError):
    """A plan cannot be applied to this model (names the layer, value and what is allowed)."""


class OffloadDirError(ExecutorError):
    """The disk tier's directory is missing, not creatable, not writable or too small."""
