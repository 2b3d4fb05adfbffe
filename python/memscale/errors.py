"""Exception classes. C++ errors are translated to these same classes by the bindings."""
from __future__ import annotations


class MemScaleError(Exception):
    """Base of every error MemScale raises on purpose."""


class ConfigError(MemScaleError, ValueError):
    """Invalid configuration or input document; the message names the key, the value
    given and what is allowed."""


class InfeasibleBudgetError(MemScaleError):
    """No plan fits the budget.

    Attributes:
        min_budget_bytes: the smallest budget for which a plan exists under the same
            overrides.
    """

    def __init__(self, message: str, min_budget_bytes: int = 0) -> None:
        super().__init__(message)
        self.min_budget_bytes = int(min_budget_bytes)


class ExecutorError(MemScaleError, ValueError):
    """A plan cannot be applied to this model (names the layer, value and what is allowed).

    Raised *before* the model is modified: the runtime validates a whole plan first.
    """


class OffloadDirError(ExecutorError):
    """The disk tier's directory is missing, not creatable, not writable or too small."""
