"""Helpers shared by the profiler scenarios (``estimate_accuracy``, ``profile_1b``)."""
from __future__ import annotations

import json
from typing import Any


def predicted_unoptimized_peak(graph: dict[str, Any]) -> tuple[int, str]:
    """(bytes, predictor): the decision engine's unoptimized training-step peak of a profiled
    ModelGraph dict (``memscale.plan`` with optimization off; no real memory is used)."""
    from memscale._C import ModelGraph
    from memscale.config import Config
    from memscale.hardware import detect_hardware
    from memscale.planning import plan as make_plan
    g = ModelGraph.from_json(json.dumps(graph))
    plan = make_plan(g, Config(mode="off"), hardware=detect_hardware())
    return int(plan.unoptimized_peak_bytes), "engine"
