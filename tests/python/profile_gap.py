"""Known open bug, stated where it bites: on some CPUs the profile ``wrap`` makes (fake
tensors, no real kernels) underestimates a convolutional model's unoptimized step peak. On an
AMD EPYC with AVX2 (2026-12-04) ResNet's layer4 blocks need 5.3-5.9 MB of backward scratch
inside the convolution kernels, where the fake-tensor estimate says 0.9-1.2 MB: predicted
12.75 MB, measured 16.75 MB. ``memscale.profile(..., measure=True)`` sees it (its measured
step gives the layer those figures); the first-step check (runtime/training/verify.py) sees
it too and refuses a budget between the two with the right minimum: honest, but not what the
sweeps assert (``wrap`` itself refusing). Such a run is reported as xfail with its figures;
wherever the profile is within ``GAP`` of the measured peak, the tests assert in full.
"""
from __future__ import annotations

from typing import Any

import pytest
import torch

import memscale

#: Beyond this measured / predicted ratio of the unoptimized peak the sweep's premise fails.
GAP = 1.10


def predicted_unoptimized_peak(model: torch.nn.Module, inputs: Any, **wrap_kwargs: Any) -> int:
    """What ``wrap`` predicts for the step with nothing applied (a budget nothing exceeds)."""
    memscale.wrap(model, memscale.Config(memory_budget=1 << 50), example_inputs=inputs, **wrap_kwargs)
    try:
        return int(memscale.plan_of(model).predicted_peak_bytes)
    finally:
        memscale.unwrap(model)


def xfail_on_profile_gap(name: str, predicted: int, measured: int, refusal: Exception) -> None:
    """Turns ``refusal`` into an xfail when the profile is off by more than GAP; else re-raises it."""
    if measured > GAP * predicted:
        pytest.xfail(f"open bug: the profile of {name} underestimates its unoptimized step peak on this CPU "
                     f"({torch.backends.cpu.get_cpu_capability()}): predicted {predicted} B, measured {measured} B "
                     f"({measured / predicted:.3f}x); refused at the first step: {str(refusal)[:160]}")
    raise refusal
