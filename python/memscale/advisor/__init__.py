"""The fit advisor: the largest batch or sequence length that fits a budget (docs/fit.md)."""
from .fit import FitResult, fit, fit_frontier

__all__ = ["FitResult", "fit", "fit_frontier"]
