"""The training runtime: applies a Plan's per-layer techniques to a model, reversibly.

Example:
    >>> import torch
    >>> from memscale.runtime.training import apply_plan
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh())
    >>> with apply_plan(model, {"layers": [{"name": "0", "techniques": ["checkpoint"]}]}):
    ...     model(torch.randn(2, 4)).sum().backward()
"""
from .apply import PlanHandle, active_handle, apply_plan, install_plan
from .offload_activations import DEFAULT_MIN_OFFLOAD_BYTES

__all__ = ["active_handle", "apply_plan", "install_plan", "PlanHandle", "DEFAULT_MIN_OFFLOAD_BYTES"]
