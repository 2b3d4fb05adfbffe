"""Tiled linear + cross-entropy on a 32k vocabulary against the untiled version.

Both variants run the same forward + backward of an LM head's loss on the same
inputs: ``F.cross_entropy(F.linear(hidden, W), targets)`` (untiled, full logits) and
``memscale.nn.linear_cross_entropy(hidden, W, targets)`` (tiled). For each one:

* measured peak: ``memscale.track_memory(device)`` (the counting allocator on the CPU,
  the caching allocator's statistics on CUDA) around
  forward + backward, with the inputs allocated before the scope opens, so the figure
  is everything the step allocates on top of them (logits, softmax, gradients);
* step time: ``memscale.bench.timing.interleave`` (fixed torch threads, warm-up, the
  variants interleaved round by round so machine load affects both alike; medians, and
  the time ratio as the median of the paired per-round ratios);
* gradients of ``hidden`` and ``W`` compared with each other (max |diff| relative to
  the scale) and, since fp32 sums in a different order differ by rounding, both against
  a float64 reference: ``grad_error_vs_untiled`` is the tiled error over the untiled
  error (1 = exactly as accurate; "equal" means at most 2).

Goals: ``peak_ratio`` = tiled / untiled peak ≤ 0.25, ``time_ratio`` ≤ 1.15.

Run: ``python benchmarks/tiling_lce.py [--quick] [--out FILE]`` or
``python -m memscale.bench.scenarios.tiling_lce``.
"""
from __future__ import annotations

import gc
from typing import Any, Callable

import torch
import torch.nn.functional as F

from memscale.memory import track_memory
import memscale.nn as mnn
from memscale.bench.timing import fixed_threads, interleave

VOCAB = 32_000

Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _untiled(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    loss = F.cross_entropy(F.linear(hidden, weight), targets)
    return torch.autograd.grad(loss, [hidden, weight])  # type: ignore[return-value]


def _tiled(chunks: int | None) -> Step:
    def step(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        loss = mnn.linear_cross_entropy(hidden, weight, targets, chunks=chunks)
        return torch.autograd.grad(loss, [hidden, weight])  # type: ignore[return-value]
    return step


def _measure_peak(step: Step, *inputs: torch.Tensor) -> tuple[int, tuple[torch.Tensor, ...]]:
    gc.collect()
    with track_memory(inputs[0].device) as tracker:
        grads = step(*inputs)
    return tracker.peak_bytes, grads


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def _reference_errors(grads: list[tuple[torch.Tensor, ...]], hidden: torch.Tensor, weight: torch.Tensor,
                      targets: torch.Tensor) -> list[list[float]]:
    """Each variant's gradient errors against the untiled loss computed in float64."""
    ref = _untiled(hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_(), targets)
    return [[_rel_diff(g.double(), r) for g, r in zip(variant, ref)] for variant in grads]


def run(quick: bool, device: torch.device = torch.device("cpu")) -> list[dict[str, Any]]:
    with fixed_threads():
        return _run(quick, device)


def _run(quick: bool, device: torch.device) -> list[dict[str, Any]]:
    if device.type == "cuda":  # a GPU step of a few milliseconds needs more tokens and repeats
        tokens, hidden_size, repeats = (8192, 1024, 15) if quick else (32768, 2048, 20)
    else:
        tokens, hidden_size, repeats = (1024, 256, 15) if quick else (4096, 512, 9)
    torch.manual_seed(0)
    hidden = (torch.randn(tokens, hidden_size, device=device) * 0.5).requires_grad_()
    weight = (torch.randn(VOCAB, hidden_size, device=device) / hidden_size ** 0.5).requires_grad_()
    targets = torch.randint(0, VOCAB, (tokens,), device=device)
    targets[::17] = -100  # some ignored positions, as padding would be
    chunks = None  # the library's default sizing (memscale.nn.default_chunks)
    tiled = _tiled(chunks)

    _untiled(hidden, weight, targets)  # warm-up: thread pools, allocator caches
    tiled(hidden, weight, targets)
    peak_untiled, grads_untiled = _measure_peak(_untiled, hidden, weight, targets)
    peak_tiled, grads_tiled = _measure_peak(tiled, hidden, weight, targets)
    diffs = [_rel_diff(a, b) for a, b in zip(grads_tiled, grads_untiled)]
    (err_tiled, err_untiled) = _reference_errors([grads_tiled, grads_untiled], hidden, weight, targets)
    error_ratio = max(t / max(u, 1e-12) for t, u in zip(err_tiled, err_untiled))
    del grads_tiled, grads_untiled

    timing = interleave({"untiled": lambda: _untiled(hidden, weight, targets),
                         "tiled": lambda: tiled(hidden, weight, targets)}, rounds=repeats, warmup=1,
                        device=device)
    times_untiled, times_tiled = timing.times_s["untiled"], timing.times_s["tiled"]
    t_untiled, t_tiled = timing.median("untiled"), timing.median("tiled")
    n_chunks = mnn.default_chunks(tokens, VOCAB, device)
    return [{
        "scenario": "tiling_lce",
        "model": f"lm_head {hidden_size}x{VOCAB}",
        "label": f"{tokens} tokens",
        "tokens": tokens,
        "hidden": hidden_size,
        "vocab": VOCAB,
        "chunks": n_chunks,
        "repeats": repeats,
        "measured_peak_bytes": peak_tiled,
        "baseline": {"untiled": {"measured_peak_bytes": peak_untiled, "step_time_s": t_untiled,
                                 "times_s": times_untiled}},
        "step_time_s": t_tiled,
        "times_s": times_tiled,
        "input_bytes": (hidden.numel() + weight.numel()) * 4,
        "full_logits_bytes": tokens * VOCAB * 4,
        "grad_max_rel_diff": {"hidden": diffs[0], "weight": diffs[1]},
        "grad_error_vs_float64": {"tiled": dict(zip(("hidden", "weight"), err_tiled)),
                                  "untiled": dict(zip(("hidden", "weight"), err_untiled))},
        "grads_equal": error_ratio <= 2.0,
        "ratios": {"peak_ratio": peak_tiled / peak_untiled, "time_ratio": timing.ratio("tiled", "untiled"),
                   "grad_error_vs_untiled": error_ratio},
        "measurement": f"track_memory('{device.type}'); median wall time (synchronized on CUDA)",
        "timing": timing.method(),
    }]


if __name__ == "__main__":
    from memscale.bench.records import scenario_main

    raise SystemExit(scenario_main(run))
