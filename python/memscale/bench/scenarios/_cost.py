"""Wall time and extra resident memory of one call (the 1B-definition scenarios' measure).

Extra RSS is psutil's resident set after minus before; the peak's growth is ``ru_maxrss``
after minus before (Linux reports KiB), so memory freed before the call returns counts too.
"""
from __future__ import annotations

import gc
import resource
import time
from dataclasses import dataclass
from typing import Any, Callable

import psutil


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class Cost:
    result: Any
    seconds: float
    extra_rss_bytes: int
    extra_peak_rss_bytes: int


def measure_cost(call: Callable[[], Any]) -> Cost:
    proc = psutil.Process()
    gc.collect()
    rss0, maxrss0 = proc.memory_info().rss, maxrss_bytes()
    start = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - start
    rss1, maxrss1 = proc.memory_info().rss, maxrss_bytes()
    return Cost(result, seconds, max(0, rss1 - rss0), max(0, maxrss1 - maxrss0))
