"""What a ``memscale.ContinuousScheduler`` run reports."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any



def quantile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values`` (nearest rank); 0 for none."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))] if s else 0.0

@dataclass
class ServingReport:
    """A run: throughput, latencies, measured peak per iteration against the budget,
    the engine's actions counted by rule id."""

    budget_bytes: int
    completed: int
    generated_tokens: int
    wall_seconds: float
    iterations: int
    measured_peak_bytes: int
    projected_peak_bytes: int
    over_budget_iterations: int
    rules: dict[str, int]
    latencies: list[float]
    preemption_reasons: list[str] = field(default_factory=list)
    # the resident set: the models' weights + the process's RSS growth over the run's start
    # (psutil, sampled after every iteration), beside the counting allocator's peak
    resident_peak_bytes: int = 0
    resident_meter: str = "psutil RSS growth over the run's start, sampled every iteration, + the resident weights"

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def preemptions(self) -> int:
        return self.rules.get("serving.preempt_swap", 0) + self.rules.get("serving.preempt_recompute", 0)

    def latency(self, q: float) -> float:
        """The q-quantile (0..1) of submit-to-finish seconds."""
        return quantile(self.latencies, q)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["latencies"]
        d.update(tokens_per_second=self.tokens_per_second, preemptions=self.preemptions,
                 p50_latency_s=self.latency(0.5), p99_latency_s=self.latency(0.99))
        return d
