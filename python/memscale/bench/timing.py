"""Step timing that holds up on a shared machine: interleaved rounds, medians, paired ratios.

Timing each configuration in its own block of steps lets machine load that comes and goes
(another process compiling, say) land on one configuration and not the others; on a 2-core
machine torch's two intra-op threads also stall whenever either core is taken, so a single
step can take several times its quiet duration. ``interleave`` therefore

* fixes torch's intra-op threads for the measurement (``MEMSCALE_BENCH_THREADS``, default
  1: with one thread a busy second core costs little, and runs are comparable);
* runs ``warmup`` untimed rounds, then ``rounds`` timed rounds of one step of every
  configuration, the order rotated each round so no configuration always follows the same
  one (allocator state, caches);
* reports each configuration's median step time, and ratios as the median over rounds of
  the ratio of the two configurations' steps *in the same round* (paired, so slow load
  phases cancel);
* records the method, the thread count and the load average before and after in the
  result (:meth:`Timing.method`).

Example:
    >>> import time
    >>> from memscale.bench.timing import interleave
    >>> t = interleave({"a": lambda: time.sleep(0.002), "b": lambda: time.sleep(0.001)},
    ...                rounds=3, warmup=1)
    >>> sorted(t.times_s) == ["a", "b"] and len(t.times_s["a"]) == 3
    True
"""
from __future__ import annotations

import contextlib
import gc
import os
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

#: Intra-op threads of torch during timed steps, unless MEMSCALE_BENCH_THREADS says otherwise.
DEFAULT_THREADS = 1


def bench_threads() -> int:
    """Threads for timed steps: ``MEMSCALE_BENCH_THREADS`` (a positive int) or DEFAULT_THREADS."""
    from ..errors import ConfigError

    raw = os.environ.get("MEMSCALE_BENCH_THREADS", "")
    if not raw:
        return DEFAULT_THREADS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"MEMSCALE_BENCH_THREADS: got {raw!r}; expected a positive integer")
    return value


@contextlib.contextmanager
def fixed_threads(threads: int | None = None) -> Iterator[int]:
    """Run the block with torch's intra-op threads fixed; restore the previous count."""
    n = bench_threads() if threads is None else threads
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


@dataclass
class Timing:
    """Per-configuration step times (seconds) of interleaved rounds."""

    times_s: dict[str, list[float]]
    rounds: int
    warmup: int
    threads: int
    load_before: list[float] | None = None
    load_after: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.times_s[name])

    def ratio(self, name: str, baseline: str) -> float:
        """Median over rounds of ``name``'s step / ``baseline``'s step in the same round."""
        pairs = zip(self.times_s[name], self.times_s[baseline])
        return statistics.median(a / b for a, b in pairs)

    def method(self) -> dict[str, Any]:
        """What the JSON record says about how the times were taken."""
        return {
            "kind": "interleaved",
            "description": ("one step of every configuration per round, order rotated each "
                            "round, after warm-up rounds; step_time_s = median over rounds; "
                            "ratios = median over rounds of the paired per-round ratio"),
            "rounds": self.rounds,
            "warmup_rounds": self.warmup,
            "torch_threads": self.threads,
            "load_average_before": self.load_before,
            "load_average_after": self.load_after,
            **self.extra,
        }


def interleave(steps: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1,
               threads: int | None = None, device: torch.device = torch.device("cpu")) -> Timing:
    """Time ``steps`` (name -> one step) in ``rounds`` interleaved rounds; see module doc.
    On a CUDA ``device`` each step is timed from and to a synchronized device."""
    from .device import clock

    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0; got rounds={rounds}, warmup={warmup}")
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    with fixed_threads(threads) as n:
        load_before = _load()
        for r in range(warmup + rounds):
            gc.collect()  # a collection inside a timed step would bill whichever ran then
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                start = clock(device)
                steps[name]()
                elapsed = clock(device) - start
                if r >= warmup:
                    times[name].append(elapsed)
        load_after = _load()
    return Timing(times, rounds, warmup, n, load_before, load_after)
