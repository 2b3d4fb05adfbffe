"""The figures ``plan_quality`` derives from its rows: the best PyTorch option that fits
under a peak, the ratio of two modelled costs, and the bisection that finds the largest
``activation_memory_budget`` whose measured peak fits a budget. Pure functions, so the
tests can hold them to synthetic inputs."""
from __future__ import annotations

import math
from typing import Any, Callable


def best_fitting(rows: dict[str, dict[str, Any]], max_peak_bytes: int) -> str | None:
    """Name of the fastest row (least ``step_time_s``) whose ``measured_peak_bytes`` is at most
    ``max_peak_bytes``; rows without a measurement (``step_time_s`` None) do not count.
    None when no row fits. Ties go to the first name in sorted order (deterministic)."""
    fitting = [(row["step_time_s"], name) for name, row in sorted(rows.items())
               if row.get("step_time_s") is not None and row.get("measured_peak_bytes") is not None
               and row["measured_peak_bytes"] <= max_peak_bytes]
    return min(fitting)[1] if fitting else None


def cost_ratio(cost_s: float, optimum_s: float) -> float:
    """``cost_s / optimum_s``; 1.0 when both are zero (nothing to pay), infinity when only the
    optimum is free."""
    if cost_s < 0 or optimum_s < 0:
        raise ValueError(f"modelled costs must be >= 0; got {cost_s} and {optimum_s}")
    if optimum_s == 0:
        return 1.0 if cost_s == 0 else math.inf
    return cost_s / optimum_s


def search_fraction(peak_of: Callable[[float], int], budget_bytes: int, iterations: int,
                    tried: dict[float, int] | None = None) -> tuple[float | None, dict[float, int]]:
    """Bisect ``activation_memory_budget`` in [0, 1] for the largest fraction whose measured
    peak ``peak_of(fraction)`` is at most ``budget_bytes`` (a larger fraction keeps more
    activations: faster, more memory). ``tried`` caches measured fractions across calls (one
    compile each). Fraction 0 (the partitioner recomputes all it may) is tried first; when it
    does not fit, 1.0 is tried too unless ``iterations`` is 0 (the quick run: one compile).
    Returns (the largest fitting fraction tried, or None, and ``tried``). The peak is not
    guaranteed monotone in the fraction, so the answer is over what was tried."""
    tried = {} if tried is None else tried

    def fits(fraction: float) -> bool:
        if fraction not in tried:
            tried[fraction] = int(peak_of(fraction))
        return tried[fraction] <= budget_bytes

    if fits(0.0) or iterations > 0:
        low, high = 0.0, 1.0
        if fits(high) or not fits(low):
            iterations = 0
        for _ in range(iterations):
            mid = round((low + high) / 2, 6)
            if fits(mid):
                low = mid
            else:
                high = mid
    fitting = [f for f, peak in tried.items() if peak <= budget_bytes]
    return (max(fitting) if fitting else None), tried
