"""The fit advisor: the largest batch or sequence length that fits a budget (docs/fit.md)."""
from .fit import FitResult, fit

__all__ = ["FitResult", "fit"]
