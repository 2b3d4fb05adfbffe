"""``memscale.plan``: the only caller of the decision engine, plus the inference
reservation calibration and the tier-policy search.

The engine is a pure C++ function of (ModelGraph, Hardware, Config); these wrappers only
turn Python arguments into those three documents. Identical inputs give byte-identical
``plan.to_json()``. The runtime asks for its plans here (:func:`plan_model`), never
from ``_C`` directly.

Example:
    >>> import memscale
    >>> hw = memscale.Hardware.from_json('{"devices": [], "host_total_bytes": 8589934592}')
    >>> layer = ('{"index": %d, "name": "fc%d", "kind": "mlp", "param_bytes": 4096,'
    ...          ' "activation_bytes": 4194304, "input_bytes": 65536}')
    >>> graph = memscale.ModelGraph.from_json(
    ...     '{"layers": [%s, %s]}' % (layer % (0, 0), layer % (1, 1)))
    >>> p = memscale.plan(graph, hardware=hw, memory_budget="6MiB")
    >>> [l.techniques for l in p.layers], p.predicted_peak_bytes <= p.budget_bytes
    ([['checkpoint'], []], True)
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterable, Mapping, Union

from torch import nn

from . import _C
from ._coerce import as_config
from .config import Config

_log = logging.getLogger("memscale")

GraphLike = Union["_C.ModelGraph", str, os.PathLike]
HardwareLike = Union["_C.Hardware", str, os.PathLike, None]


def _graph(graph: GraphLike) -> Any:
    if isinstance(graph, _C.ModelGraph):
        return graph
    if isinstance(graph, (str, os.PathLike)):
        return _C.ModelGraph.from_json(os.fspath(graph))
    raise TypeError(f"graph: expected a memscale.ModelGraph, JSON text or a path, got {type(graph).__name__}")


def _hardware(hardware: HardwareLike) -> Any:
    if isinstance(hardware, _C.Hardware):
        return hardware
    if isinstance(hardware, (str, os.PathLike)):
        return _C.Hardware.from_json(os.fspath(hardware))
    if hardware is not None:
        raise TypeError(f"hardware: expected a memscale.Hardware, JSON text or a path, got {type(hardware).__name__}")
    from .hardware import detect_hardware

    return detect_hardware()


def plan(graph: GraphLike, cfg: Config | None = None, hardware: HardwareLike = None, *,
         calibration: Any = None, **config_kwargs: Any) -> Any:
    """Plan ``graph`` on ``hardware`` under ``cfg`` (plus Config keyword overrides).

    Args:
        graph: a ``memscale.ModelGraph``, or its JSON text or file path.
        cfg: a ``memscale.Config``; keyword arguments (``memory_budget="4GiB"``, ...) build
            one or override its keys.
        hardware: a ``memscale.Hardware`` (or JSON text / path); default
            ``memscale.detect_hardware()``.
        calibration: a ``memscale.Calibration`` from :func:`calibrate_reservation`; replaces
            the reservation safety factor of inference plans and is recorded in the plan.

    Returns:
        ``memscale.Plan`` (``to_json()``, ``summary()``, ``layers``, ``predicted_peak_bytes``,
        ``unoptimized_peak_bytes``, ``pressure``, ...).

    Raises:
        memscale.InfeasibleBudgetError: no plan fits; ``min_budget_bytes`` is the smallest
            budget that has one under the same Config.
        memscale.ConfigError: invalid input or an override that cannot be honoured.
    """
    result = _C.plan(_graph(graph), as_config(cfg, config_kwargs, allow_dict=False).cpp, _hardware(hardware), calibration)
    _log.debug("plan: predicted peak %d of budget %d bytes (pressure %.3f, %s)", result.predicted_peak_bytes,
               result.budget_bytes, result.pressure, "skipped" if result.skipped else
               f"{sum(1 for layer in result.layers if layer.techniques)} layers changed")
    return result


def plan_cost(graph: GraphLike, plan: Any, hardware: HardwareLike = None) -> float:
    """The modelled cost of a training ``plan`` of ``graph``: seconds its techniques add to
    a step (recompute, tiling, exposed offload transfer), as the engine prices them on
    ``hardware`` (default ``memscale.detect_hardware()``). What ``solver="optimal"``
    minimises (docs/solver.md); give the hardware the plan was made for."""
    return _C.plan_cost_seconds(_graph(graph), _hardware(hardware), plan)


def plan_timeline(graph: GraphLike, plan: Any, cfg: Config | None = None, hardware: HardwareLike = None,
                  **config_kwargs: Any) -> Any:
    """The predicted memory timeline of a training ``plan`` of ``graph``: a
    ``memscale.PlanTimeline`` whose ``points`` are each layer's forward, each layer's
    backward (reverse order) and the optimizer step, with ``before_bytes`` (no technique)
    and ``after_bytes`` (under the plan). Their maxima are the plan's
    ``unoptimized_peak_bytes`` and ``predicted_peak_bytes``. Give the ``cfg`` and
    ``hardware`` the plan was made with (default ``memscale.detect_hardware()``); inputs that
    do not reproduce the plan's peaks raise ``MemScaleError``.

    Example:
        >>> import memscale
        >>> hw = memscale.Hardware.from_json('{"devices": [], "host_total_bytes": 8589934592}')
        >>> graph = memscale.ModelGraph.from_json('{"layers": [{"index": 0, "name": "mlp", "kind": "mlp",'
        ...     ' "param_bytes": 4096, "activation_bytes": 4194304, "input_bytes": 65536}]}')
        >>> p = memscale.plan(graph, hardware=hw, memory_budget="8MiB")
        >>> t = memscale.plan_timeline(graph, p, hardware=hw, memory_budget="8MiB")
        >>> [x.label for x in t.points]
        ['forward mlp', 'backward mlp', 'optimizer step']
        >>> max(x.after_bytes for x in t.points) == p.predicted_peak_bytes
        True
    """
    cpp = as_config(cfg, config_kwargs, allow_dict=False).cpp
    return _C.plan_timeline(_graph(graph), _hardware(hardware), cpp, plan)


def plan_model(model: nn.Module, example_inputs: Any, cfg: Config, *, training: bool,
               optimizer: Any = "adamw", offload_dir: str | None = None, calibration: Any = None,
               graph: Any = None, loss_fn: Any = None, autocast: Any = None,
               optimizer_offloadable: bool = False) -> tuple[Any, Any, Any]:
    """Profile ``model`` (unless ``graph`` is given), detect the hardware of the device it
    is on and plan it: ``(plan, graph, hardware)``. What ``wrap`` and the inference
    runtime call; raises what :func:`plan` raises. ``loss_fn``: the caller computes the
    loss outside forward (recorded in the graph's capabilities); ``autocast``: the step's
    autocast dtype (None: the one active at the call); ``optimizer_offloadable``: the caller
    steps the OffloadedOptimizer the plan asks for, so the engine may keep the optimizer
    state and gradients on the next tier (rules/optimizer_offload.hpp)."""
    from .distributed import check_same_plan, common_hardware
    from .hardware import detect_hardware, model_device
    from .profiler.distributed import is_distributed
    from .profiler.profile import profile

    if graph is None:
        graph = profile(model, example_inputs, training=training, optimizer=optimizer if training else "none",
                        loss_fn=loss_fn, autocast=autocast)
    if optimizer_offloadable and not graph.optimizer_offloadable:
        graph = offloadable_graph(graph, model)
    hardware = detect_hardware(offload_dir or None, device=model_device(model))
    if not is_distributed(model):
        return plan(graph, cfg, hardware=hardware, calibration=calibration), graph, hardware
    # One rank of DDP / FSDP2: every rank plans for the smallest memory any rank detected,
    # and the ranks' plans are checked to be the same before the first step.
    hardware = common_hardware(hardware)
    return check_same_plan(lambda: plan(graph, cfg, hardware=hardware, calibration=calibration)), graph, hardware


def offloadable_graph(graph: Any, model: nn.Module | None = None) -> Any:
    """``graph`` marked ``optimizer_offloadable``: the runtime streams its optimizer's state
    (and gradients) when the plan says so. With ``model``, its layers the training pager can
    page lose the ``offload_weights`` refusal they had only for want of an offloaded step
    (runtime/training/capabilities.py); the engine pages them only with the state and
    gradients offloaded (rules/optimizer_offload.hpp, level 3)."""
    from .runtime.training.capabilities import NO_TRAINING_WEIGHT_EXECUTOR, training_paging_cannot

    doc = json.loads(graph.to_json())
    doc["optimizer_offloadable"] = True
    if model is not None and doc.get("training"):
        for layer in doc["layers"]:
            cannot = layer.get("cannot") or {}
            if cannot.get("offload_weights") != NO_TRAINING_WEIGHT_EXECUTOR:
                continue
            reason = training_paging_cannot(model, layer["name"], layer["kind"])
            if reason is None:
                del cannot["offload_weights"]
            else:
                cannot["offload_weights"] = reason
    return _C.ModelGraph.from_json(json.dumps(doc, sort_keys=True))


def _sample(item: Any) -> Any:
    if isinstance(item, _C.ReservationSample):
        return item
    if isinstance(item, Mapping):
        return _C.ReservationSample(**item)
    return _C.ReservationSample(*item)


def calibrate_reservation(samples: Iterable[Any]) -> Any:
    """Fit the inference activation reservation's safety factor to measured peaks.

    Each sample is a ``memscale.ReservationSample``, a dict with ``widest_buffer``,
    ``tokens_per_step``, ``dtype_bytes`` and ``measured_bytes`` (the measured activation
    peak: step peak minus weights, KV cache and graph-capture headroom), or a tuple in that
    order. Returns a ``memscale.Calibration``; pass it to :func:`plan` as ``calibration=``.

    Example:
        >>> import memscale
        >>> c = memscale.calibrate_reservation([(4096, 8192, 2, 4096 * 8192 * 2 * 3)])
        >>> c.safety_factor
        3.0
    """
    return _C.calibrate_safety_factor([_sample(s) for s in samples])


def _split(value: Any, path: str) -> Any:
    return value if isinstance(value, _C.TierSplit) else _C.TierSplit.from_dict(value, path)


def search_tier_policy(problem: Any = None, **fields: Any) -> Any:
    """Minimum-latency tier policy (FlexGen-style per tensor type split) for ``problem`` or for the given fields.

    Fields are those of ``memscale.TierProblem``: ``weights_bytes``, ``kv_cache_bytes``,
    ``activation_bytes``, ``gpu_capacity``, ``cpu_capacity``, ``disk_capacity``,
    ``compute_s``, optionally ``kv_append_bytes``, the three bandwidths, ``fixed``
    (``{"weights": {"gpu": 50, "cpu": 50}}``) and ``step_percent`` (default 5). Returns a
    ``TierSearchResult`` with ``policy`` and ``cost``; raises InfeasibleBudgetError when the
    tiers cannot hold the tensors (``min_budget_bytes`` = the GPU capacity needed).

    Example:
        >>> import memscale
        >>> r = memscale.search_tier_policy(weights_bytes=8 << 30, kv_cache_bytes=2 << 30,
        ...     activation_bytes=1 << 30, gpu_capacity=6 << 30, cpu_capacity=64 << 30,
        ...     disk_capacity=1 << 40, compute_s=0.02)
        >>> r.cost.gpu_bytes <= 6 << 30, r.cost.disk_bytes
        (True, 0)
    """
    if problem is None:
        if "fixed" in fields:
            fields["fixed"] = {k: _split(v, f"fixed.{k}") for k, v in dict(fields["fixed"]).items()}
        problem = _C.TierProblem(**fields)
    elif fields:
        raise TypeError("search_tier_policy: give a TierProblem or its fields, not both")
    return _C.search_tier_policy(problem)


def tier_problem(graph: GraphLike, cfg: Config | None = None, hardware: HardwareLike = None,
                 **config_kwargs: Any) -> Any:
    """The tier problem an inference graph poses on ``hardware`` (GPU capacity = the
    budget, ``Config.tiers`` as fixed splits); feed it to :func:`search_tier_policy`."""
    return _C.tier_problem(_graph(graph), _hardware(hardware), as_config(cfg, config_kwargs, allow_dict=False).cpp)


def min_budget(graph: GraphLike, cfg: Config | None = None, hardware: HardwareLike = None,
               **config_kwargs: Any) -> int:
    """The smallest budget with a plan of ``graph`` under ``cfg``'s other keys (the engine's
    refusal minimum at a one-byte budget), in bytes."""
    return int(_C.min_budget_bytes(_graph(graph), as_config(cfg, config_kwargs, allow_dict=False).cpp,
                                   _hardware(hardware)))


def fit_search(scaling: Any, cfg: Config, hardware: HardwareLike, min_size: int, max_size: int) -> Any:
    """The engine's fit search (include/memscale/core/fit.hpp) over a ``_C.GraphScaling``:
    the largest size in ``[min_size, max_size]`` it plans within ``cfg``'s budget. Raises
    InfeasibleBudgetError when ``min_size`` does not fit (its ``min_budget_bytes``)."""
    return _C.fit_search(scaling, cfg.cpp, _hardware(hardware), int(min_size), int(max_size))
