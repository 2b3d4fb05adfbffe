"""Fit advisor cost on a ~1.1B-parameter Llama-style model defined on the meta device.

Builds ``memscale.testing.models.llama`` with ``preset="1b"`` under ``torch.device("meta")``
(no weights exist) and times ``memscale.fit`` (example inputs at batch 2) for the largest training batch at a fixed
sequence length within a budget, planned for a described machine with one 80 GiB GPU (a budget of 40 GiB: AdamW state of 1.1B fp32 parameters alone is 17.6 GB) (the
answer does not depend on this host). Records the wall time and the extra resident memory of
the process (psutil RSS after minus before, and the growth of the peak RSS, ``ru_maxrss``),
the answer, the profiles it took and the engine plans it asked for. Limits from issue 19:
< 30 s and < 300 MB extra RAM.

Run: ``python -m memscale.bench.scenarios.fit_1b [--quick] [--out FILE]`` (or
``memscale bench --scenario fit_1b``), from anywhere.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import torch

from memscale._C import Hardware
from memscale.advisor.fit import fit
from memscale.bench.records import scenario_main
from memscale.bench.scenarios._cost import measure_cost
from memscale.testing import models

log = logging.getLogger("memscale")

SCENARIO = "fit_1b"
TIME_LIMIT_S = 30.0
RAM_LIMIT_BYTES = 300 << 20
GPU_BYTES = 80 << 30
BUDGET = "40GiB"


def _gpu_machine() -> Any:
    gpu = {"kind": "cuda", "index": 0, "name": "80 GiB GPU", "total_bytes": GPU_BYTES, "free_bytes": GPU_BYTES}
    return Hardware.from_json(json.dumps({"devices": [gpu], "host_total_bytes": 64 << 30,
                                                   "host_available_bytes": 64 << 30}))


def run(quick: bool = False) -> list[dict[str, Any]]:
    seqs = (512,) if quick else (512, 2048)
    with torch.device("meta"):
        model = models.build("llama", preset="1b")
    params = sum(p.numel() for p in model.parameters())
    hardware = _gpu_machine()
    records = []
    for seq in seqs:
        inputs = models.example_inputs("llama", model, batch=2, seq=seq, device="meta")
        cost = measure_cost(lambda: fit(model, inputs, BUDGET, vary="batch", hardware=hardware))
        result, seconds = cost.result, cost.seconds
        extra_rss, extra_peak = cost.extra_rss_bytes, cost.extra_peak_rss_bytes
        log.info("fit %d parameters (seq %d): batch %d in %.2f s, extra RSS %.1f MiB (peak +%.1f MiB)",
                 params, seq, result.size, seconds, extra_rss / 2**20, extra_peak / 2**20)
        records.append({
            "scenario": SCENARIO, "model": "llama-1b", "label": f"seq={seq}", "seq": seq, "parameters": params,
            "budget_bytes": result.budget_bytes, "batch": result.size, "capped": result.capped,
            "predicted_peak_bytes": result.plan.predicted_peak_bytes,
            "next_min_budget_bytes": result.next_min_budget_bytes, "min_budget_bytes": result.min_budget_bytes,
            "profiled_sizes": result.profiled_sizes,
            "techniques": sorted({t for layer in result.plan.layers for t in layer.techniques}),
            "seconds": round(seconds, 4), "cpu_seconds": round(cost.cpu_seconds, 4),
            "extra_rss_bytes": extra_rss, "extra_peak_rss_bytes": extra_peak,
            "time_limit_s": TIME_LIMIT_S, "ram_limit_bytes": RAM_LIMIT_BYTES,
            "ratios": {"time_vs_limit": round(seconds / TIME_LIMIT_S, 6),
                       "ram_vs_limit": round(max(extra_rss, extra_peak) / RAM_LIMIT_BYTES, 6)},
        })
    return records


if __name__ == "__main__":
    raise SystemExit(scenario_main(run))
