"""Helpers shared by the profiler scenarios (``estimate_accuracy``, ``profile_1b``)."""
from __future__ import annotations

import json
from typing import Any, Callable


def temporary_unoptimized_peak(graph: dict[str, Any]) -> int:
    """TEMPORARY predictor of the unoptimized training-step peak, from ModelGraph fields only.

    Used until the decision engine (``memscale.plan(...).unoptimized_peak_bytes``) is on
    main. It walks the backward pass, where a training step peaks: when layer i's backward
    runs, resident = weights + buffers + optimizer state + inputs, plus the saved activations
    of layers 0..i, plus the gradients already produced by layers after i, plus the
    gradient flowing into layer i (its output size), plus layer i's transient (which per
    the profiler's definition contains the grads it creates and the gradient it passes on).
    """
    layers = graph["layers"]
    resident = graph["input_bytes"] + sum(
        layer["param_bytes"] + layer["buffer_bytes"] + layer["optimizer_bytes"] for layer in layers)
    grads_after = sum(layer["grad_bytes"] for layer in layers)
    saved = 0
    peak = resident
    for layer in layers:
        saved += layer["activation_bytes"]
        grads_after -= layer["grad_bytes"]
        peak = max(peak, resident + saved + grads_after + layer["output_bytes"] + layer["transient_bytes"])
    return peak


def predicted_unoptimized_peak(graph: dict[str, Any]) -> tuple[int, str]:
    """(bytes, predictor): the engine's figure when ``memscale.plan`` exists, else the temporary one."""
    import memscale

    if hasattr(memscale, "plan"):
        g = memscale.ModelGraph.from_json(json.dumps(graph))
        plan = memscale.plan(g, memscale.Config(mode="off"), hardware=memscale.detect_hardware())
        return int(plan.unoptimized_peak_bytes), "engine"
    return temporary_unoptimized_peak(graph), "temporary_unoptimized_peak"


def main_with_records(run: Callable[..., list[dict[str, Any]]]) -> int:
    """``--quick`` / ``--out FILE`` and machine info, through the suite's scenario_main."""
    from memscale.bench.records import scenario_main

    return scenario_main(run)
