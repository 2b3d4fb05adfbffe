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
    cpu_seconds: float  # this process's CPU time: what the call costs when other work shares the cores
    extra_rss_bytes: int
    extra_peak_rss_bytes: int


def measure_cost(call: Callable[[], Any]) -> Cost:
    proc = psutil.Process()
    gc.collect()
    rss0, maxrss0 = proc.memory_info().rss, maxrss_bytes()
    start, cpu0 = time.perf_counter(), time.process_time()
    result = call()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
    rss1, maxrss1 = proc.memory_info().rss, maxrss_bytes()
    return Cost(result, seconds, cpu, max(0, rss1 - rss0), max(0, maxrss1 - maxrss0))
