"""Continuous (iteration-level) batching of Hugging Face causal LMs under a memory budget."""
from .scheduler import ContinuousScheduler, ServingReport, ServingRequest

__all__ = ["ContinuousScheduler", "ServingReport", "ServingRequest"]
