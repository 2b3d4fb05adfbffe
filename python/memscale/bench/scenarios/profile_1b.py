"""Profiling cost of a ~1.1B-parameter Llama-style model defined on the meta device.

Builds ``memscale.testing.models.llama`` with ``preset="1b"`` under ``torch.device("meta")`` (no
weights exist) and times ``memscale.profile.profile_dict`` for a training step; records
the wall time and the extra resident memory of the process (psutil RSS after minus
before, and the growth of the peak RSS, ``ru_maxrss``). Limits from the issue: < 10 s and
< 200 MB extra RAM.

Run: ``python -m memscale.bench.scenarios.profile_1b [--quick] [--out FILE]`` (or
``memscale bench --scenario profile_1b``), from anywhere.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from memscale.bench.records import scenario_main
from memscale.bench.scenarios._cost import measure_cost
from memscale.bench.scenarios.profiling import predicted_unoptimized_peak
from memscale.profiler.profile import profile_dict
from memscale.testing import models

log = logging.getLogger("memscale")

SCENARIO = "profile_1b"
TIME_LIMIT_S = 10.0
RAM_LIMIT_BYTES = 200 << 20


def run(quick: bool = False) -> list[dict[str, Any]]:
    batch, seq = (1, 512) if quick else (1, 2048)
    with torch.device("meta"):
        model = models.build("llama", preset="1b")
    params = sum(p.numel() for p in model.parameters())
    inputs = models.example_inputs("llama", model, batch=batch, seq=seq)
    cost = measure_cost(lambda: profile_dict(model, inputs, training=True, optimizer="adamw"))
    graph, seconds = cost.result, cost.seconds
    extra_rss, extra_peak = cost.extra_rss_bytes, cost.extra_peak_rss_bytes
    predicted, predictor = predicted_unoptimized_peak(graph)
    log.info("profiled %d parameters (batch %d, seq %d) in %.2f s, extra RSS %.1f MiB (peak +%.1f MiB)",
             params, batch, seq, seconds, extra_rss / 2**20, extra_peak / 2**20)
    return [{
        "scenario": SCENARIO, "model": "llama-1b", "label": f"seq={seq}", "batch": batch, "seq": seq,
        "parameters": params, "layers": len(graph["layers"]),
        "seconds": round(seconds, 4), "extra_rss_bytes": extra_rss, "extra_peak_rss_bytes": extra_peak,
        "time_limit_s": TIME_LIMIT_S, "ram_limit_bytes": RAM_LIMIT_BYTES,
        "predicted": predicted, "predictor": predictor,
        "ratios": {"time_vs_limit": round(seconds / TIME_LIMIT_S, 6),
                   "ram_vs_limit": round(max(extra_rss, extra_peak) / RAM_LIMIT_BYTES, 6)},
    }]


if __name__ == "__main__":
    raise SystemExit(scenario_main(run))
