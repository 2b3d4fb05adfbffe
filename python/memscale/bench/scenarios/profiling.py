"""Helpers shared by the profiler scenarios (``estimate_accuracy``, ``profile_1b``)."""
from __future__ import annotations

import json
from typing import Any


def predicted_unoptimized_peak(graph: dict[str, Any]) -> tuple[int, str]:
    """(bytes, predictor): the decision engine's unoptimized training-step peak of a profiled
    ModelGraph dict (``memscale.plan`` with optimization off; no real memory is used)."""
    import memscale

    g = memscale.ModelGraph.from_json(json.dumps(graph))
    plan = memscale.plan(g, memscale.Config(mode="off"), hardware=memscale.detect_hardware())
    return int(plan.unoptimized_peak_bytes), "engine"
