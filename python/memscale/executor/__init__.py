"""The training executor: applies a Plan's per-layer techniques to a model, reversibly.

Example:
    >>> import torch
    >>> from memscale.executor import apply_plan
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh())
    >>> with apply_plan(model, {"layers": [{"name": "0", "techniques": ["checkpoint"]}]}):
    ...     model(torch.randn(2, 4)).sum().backward()
"""
from memscale.executor.apply import PlanHandle, active_handle, apply_plan
from memscale.executor.errors import ExecutorError, OffloadDirError
from memscale.executor.offload_activations import DEFAULT_MIN_OFFLOAD_BYTES

__all__ = ["apply_plan", "active_handle", "PlanHandle", "ExecutorError", "OffloadDirError",
           "DEFAULT_MIN_OFFLOAD_BYTES"]
