"""Estimate accuracy: predicted vs measured peak of one unoptimized training step.

For each reference architecture (gpt, encoder, vit, resnet, lstm, t5) at two batch sizes:

* measured: the counting allocator's peak (``memscale.track_memory("cpu")``; on CUDA the
  caching allocator's statistics) over the *second* training step -- forward, backward, AdamW step -- so the optimizer state
  exists; tracking starts before the model is built, so parameters, inputs, gradients,
  optimizer state, activations and scratch are all in the figure;
* predicted: the unoptimized training-step peak computed from the profiled ModelGraph
  (``memscale.profile(..., optimizer="adamw")``, no real memory used).

Run: ``python -m memscale.bench.scenarios.estimate_accuracy [--quick] [--out FILE]`` (or
``memscale bench --scenario estimate_accuracy``), from anywhere. One JSON record per
(model, batch): scenario, model, batch, predicted, measured, error (signed, relative to
measured), ratios.abs_error, predictor, machine.
"""
from __future__ import annotations

import gc
import logging
import time
from typing import Any

import torch

from memscale.bench.device import clock, fresh_device_state
from memscale.bench.records import scenario_main
from memscale.bench.scenarios.profiling import predicted_unoptimized_peak
from memscale.memory import track_memory
from memscale.profiler.profile import profile_dict
from memscale.testing import hf_models, models

log = logging.getLogger("memscale")

SCENARIO = "estimate_accuracy"
# Sizes: big enough that activations, not fixed overheads, decide the peak; each step well
# under a second on a shared 2-core CPU.
SIZES: dict[str, dict[str, Any]] = {
    "gpt": {}, "encoder": {}, "vit": {}, "resnet": {}, "lstm": {}, "t5": {},
}
BATCHES = (4, 16)
QUICK_BATCHES = (2, 8)


def _train_step(model: torch.nn.Module, inputs: tuple, opt: torch.optim.Optimizer) -> None:
    loss = model(*inputs)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def measure_peak(name: str, batch: int, device: torch.device) -> tuple[int, float, torch.nn.Module, tuple]:
    """Measured peak of the 2nd AdamW training step (bytes) and its time (s)."""
    gc.collect()
    fresh_device_state(device)
    with track_memory(device) as t:
        model = models.build(name, seed=0, **SIZES[name]).to(device)
        inputs = tuple(x.to(device) if isinstance(x, torch.Tensor) else x
                       for x in models.example_inputs(name, model, batch=batch, seed=0))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        _train_step(model, inputs, opt)  # creates the optimizer state
        t.reset_peak()
        start = clock(device)
        _train_step(model, inputs, opt)
        seconds = clock(device) - start
        peak = t.peak_bytes
    del opt
    return peak, seconds, model, inputs


def run(quick: bool = False, device: torch.device = torch.device("cpu")) -> list[dict[str, Any]]:
    records = []
    for name in SIZES:
        for batch in (QUICK_BATCHES if quick else BATCHES):
            measured, seconds, model, inputs = measure_peak(name, batch, device)
            start = time.perf_counter()
            graph = profile_dict(model, inputs, training=True, optimizer="adamw")
            profile_s = time.perf_counter() - start
            predicted, predictor = predicted_unoptimized_peak(graph)
            error = (predicted - measured) / measured
            log.info("%-8s batch %3d: predicted %d measured %d error %+.2f%%", name, batch, predicted, measured,
                     100 * error)
            records.append({
                "scenario": SCENARIO, "model": name, "batch": batch, "label": f"batch={batch}",
                "predicted": predicted, "measured": measured, "error": round(error, 6),
                "ratios": {"abs_error": round(abs(error), 6)}, "predictor": predictor,
                "step_s": round(seconds, 4), "profile_s": round(profile_s, 4),
                "layers": len(graph["layers"]),
            })
    if device.type == "cpu":  # Hugging Face models from configs, loss inside and outside (measured on CPU)
        records += hf_models.accuracy_records(predicted_unoptimized_peak)
    else:
        log.info("Hugging Face estimate records are measured on the CPU only; skipped on %s", device)
    return records


if __name__ == "__main__":
    raise SystemExit(scenario_main(run))
