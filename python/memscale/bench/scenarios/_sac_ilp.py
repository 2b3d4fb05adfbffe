"""PyTorch's own selective-activation-checkpointing ILP (``torch.distributed._tools.sac_ilp``)
as ``plan_quality`` runs it: the model's step is traced under FakeTensorMode by MemTracker,
RuntimeEstimator and SACEstimator, ``aggregate_stats`` / ``parse_module_info`` build the
module graph, and ``sac_milp`` (PuLP's CBC) picks, per module, the share of activation
memory to discard under a budget given in GiB.

``solve`` raises :class:`SacIlpUnavailable` with the reason when that pipeline cannot run
here (PuLP missing, or the estimators need CUDA: PyTorch's RuntimeEstimator times
operators with CUDA events or a roofline of CUDA capabilities); the scenario records the
reason in place of the row.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch


class SacIlpUnavailable(RuntimeError):
    """The sac_ilp pipeline cannot run on this machine; the message says why."""


def solve(build: Callable[[], tuple[torch.nn.Module, tuple[torch.Tensor, ...], Callable[[Any], torch.Tensor]]],
          budget_bytes: int, device: torch.device) -> dict[str, Any]:
    """Run the estimators on a fresh model from ``build()`` (model, inputs, loss of the output)
    under FakeTensorMode and solve the ILP for ``budget_bytes``. Returns the decisions
    (module -> share of activations discarded), PyTorch's upper bound on the peak, the
    modelled recomputation time and the time the estimators and the ILP took."""
    try:
        from torch.distributed._tools.sac_ilp import sac_milp
    except ImportError as error:
        raise SacIlpUnavailable(f"torch.distributed._tools.sac_ilp: {error}") from error
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.ilp_utils import aggregate_stats, parse_module_info
    from torch.distributed._tools.mem_tracker import MemTracker
    from torch.distributed._tools.runtime_estimator import RuntimeEstimator
    from torch.distributed._tools.sac_estimator import SACEstimator

    mode = "operator-level-benchmark" if device.type == "cuda" else "operator-level-cost-model"
    start = time.perf_counter()
    try:
        with FakeTensorMode():
            model, inputs, loss_of = build()
            if device.type != "cpu":  # built on the CPU: a fake model moves without real bytes
                model = model.to(device)
                inputs = tuple(t.to(device) for t in inputs)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

            def step() -> None:
                loss_of(model(*inputs)).backward()
                optimizer.step()
                optimizer.zero_grad()

            mem_tracker = MemTracker()
            mem_tracker.track_external(model, optimizer)
            with mem_tracker:
                step()
            runtime_estimator = RuntimeEstimator()
            with runtime_estimator(estimate_mode_type=mode):
                step()
            sac_estimator = SACEstimator()
            with sac_estimator(estimate_mode_type=mode):
                loss_of(model(*inputs))
        stats = aggregate_stats(model, mem_tracker, runtime_estimator, sac_estimator, device)
        graph = parse_module_info(stats)
    except (AssertionError, RuntimeError, NotImplementedError) as error:
        raise SacIlpUnavailable(f"PyTorch's estimators ({mode}) on {device.type}: "
                                f"{type(error).__name__}: {str(error).splitlines()[0]}") from error
    estimated = time.perf_counter()
    decisions, recompute_ms, peak_bound = sac_milp(graph, memory_budget=budget_bytes / 2**30)
    solved = time.perf_counter()
    if peak_bound < 0:
        raise SacIlpUnavailable(f"sac_milp found no solution for {budget_bytes} bytes")
    return {"decisions": dict(decisions), "predicted_peak_bytes": int(peak_bound),
            "modelled_recompute_ms": float(recompute_ms), "estimate_time_s": estimated - start,
            "ilp_time_s": solved - estimated}
