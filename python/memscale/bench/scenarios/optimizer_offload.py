"""Optimizer-state and gradient offload (``memscale.optim.offloaded``) on a GPT-style model
with AdamW, against the resident optimizer, without and with checkpoint-every-block.

Configurations (each its own model, same seed, same batch):

* ``resident``: torch.optim.AdamW, the static floor (weights + gradients + state) resident;
* ``state``: the same AdamW wrapped by ``memscale.optim.offloaded`` (state on the next tier:
  disk on the CPU, pinned host memory on CUDA);
* ``state_grads``: ``offloaded(..., gradients=True)``;
* ``checkpoint_every_block`` and ``checkpoint_state_grads``: torch.utils.checkpoint on every
  block, with the resident and with the fully offloaded optimizer: how far below the static
  floor the two together train.

Peaks: each configuration is built inside its own ``memscale.track_memory(device)`` scope
(weights, gradients, optimizer state and every read buffer counted) and runs
``PEAK_STEPS`` steps there. Results: the losses of every step and the parameters after
them, compared with the resident run (``equal``: losses identical and parameters within
rtol 1e-6). Step times: ``memscale.bench.timing.interleave`` (interleaved rounds, medians,
paired ratios). Tier traffic: ``io_stats()`` — bytes, and the share of read time hidden by
the background prefetch.

    python -m memscale.bench.scenarios.optimizer_offload [--quick] [--out FILE] [--device auto|cpu|cuda]
"""
from __future__ import annotations

import functools
import gc
import tempfile
from typing import Any, Callable

import torch
from torch.utils.checkpoint import checkpoint

from memscale._C import optimizer_state_factor
from memscale.bench.device import fresh_device_state
from memscale.bench.timing import fixed_threads, interleave
from memscale.memory import track_memory
from memscale.optim import offloaded
from memscale.bench.scenarios.training_sweep import CUDA_FULL, CUDA_QUICK, FULL, PEAK_STEPS
from memscale.testing import models

# The training sweep's model and steps (its quick model is smaller here: five configurations).
QUICK = dict(d_model=192, n_layers=3, n_heads=4, d_ff=768, max_seq=64, vocab=4096, batch=2)
ROUNDS = {True: (3, 1), False: (9, 1)}
#: name -> (checkpoint every block, offload the state, offload the gradients)
CONFIGS: dict[str, tuple[bool, bool, bool]] = {
    "resident": (False, False, False),
    "state": (False, True, False),
    "state_grads": (False, True, True),
    "checkpoint_every_block": (True, False, False),
    "checkpoint_state_grads": (True, True, True),
}


def _train(sizes: dict[str, int], config: tuple[bool, bool, bool], device: torch.device,
           directory: str) -> dict[str, Any]:
    ckpt, state, grads = config
    gc.collect()
    fresh_device_state(device)
    with track_memory(device) as tracker:
        dims = {k: v for k, v in sizes.items() if k != "batch"}
        model = models.build("gpt", seed=0, **dims).to(device)
        ids, labels = models.example_inputs("gpt", model, batch=sizes["batch"], seq=sizes["max_seq"])
        ids, labels = ids.to(device), labels.to(device)
        if ckpt:
            for block in model.blocks:
                block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
        opt: Any = torch.optim.AdamW(model.parameters(), lr=1e-3)
        if state:
            opt = offloaded(opt, directory=directory, gradients=grads)

        def step() -> float:
            opt.zero_grad(set_to_none=True)
            loss = model(ids, labels=labels)
            loss.backward()
            opt.step()
            return float(loss.detach())

        losses = [step() for _ in range(PEAK_STEPS)]
        peak = tracker.peak_bytes
    params = [p.detach().clone() for p in model.parameters()]
    # the static floor: weights + gradients + AdamW's state, all resident
    static = sum(p.numel() * p.element_size() for p in model.parameters()) * (2 + optimizer_state_factor("adamw"))
    return {"peak_bytes": int(peak), "losses": losses, "params": params, "step": step, "opt": opt,
            "static_floor_bytes": static}


def _equal(run: dict[str, Any], ref: dict[str, Any]) -> bool:
    return run["losses"] == ref["losses"] and all(
        torch.allclose(a, b, rtol=1e-6, atol=0) for a, b in zip(run["params"], ref["params"]))


def run(quick: bool, device: torch.device = torch.device("cpu")) -> list[dict[str, Any]]:
    sizes = (CUDA_QUICK if quick else CUDA_FULL) if device.type == "cuda" else (QUICK if quick else FULL)
    rounds, warmup = ROUNDS[quick]
    with fixed_threads(), tempfile.TemporaryDirectory(prefix="memscale-bench-") as directory:
        return _run(sizes, rounds, warmup, device, directory)


def _run(sizes: dict[str, int], rounds: int, warmup: int, device: torch.device,
         directory: str) -> list[dict[str, Any]]:
    runs = {name: _train(sizes, config, device, directory) for name, config in CONFIGS.items()}
    timing = interleave({name: r["step"] for name, r in runs.items()}, rounds=rounds, warmup=warmup,
                        device=device)
    base = runs["resident"]
    model_name = "gpt d{d_model} L{n_layers} seq{max_seq} b{batch} V{vocab}".format(**sizes)
    records = []
    for name, r in runs.items():
        if name == "resident":
            continue
        reference = runs["checkpoint_every_block"] if CONFIGS[name][0] else base
        stats: dict[str, Any] = r["opt"].io_stats() if CONFIGS[name][1] else {}
        records.append({
            "scenario": "optimizer_offload", "model": model_name, "label": name,
            "measured_peak_bytes": r["peak_bytes"], "static_floor_bytes": r["static_floor_bytes"],
            "step_time_s": timing.median(name), "times_s": timing.times_s[name],
            "losses": r["losses"], "equal_to_resident": _equal(r, reference),
            "io": stats,
            "baseline": {"resident": {"measured_peak_bytes": base["peak_bytes"],
                                      "step_time_s": timing.median("resident")},
                         "checkpoint_every_block": {
                             "measured_peak_bytes": runs["checkpoint_every_block"]["peak_bytes"],
                             "step_time_s": timing.median("checkpoint_every_block")}},
            "ratios": {"peak_vs_resident": r["peak_bytes"] / base["peak_bytes"],
                       "peak_vs_static_floor": r["peak_bytes"] / r["static_floor_bytes"],
                       "time_vs_resident": timing.ratio(name, "resident"),
                       "time_vs_checkpoint_every_block": timing.ratio(name, "checkpoint_every_block"),
                       "equal": 1.0 if _equal(r, reference) else 0.0},
            "measurement": f"track_memory('{device.type}') around build + {PEAK_STEPS} steps",
            "timing": timing.method(),
        })
    for r in runs.values():
        if hasattr(r["opt"], "close"):
            r["opt"].close(restore=False)
    return records


if __name__ == "__main__":
    from memscale.bench.records import scenario_main

    raise SystemExit(scenario_main(run))
