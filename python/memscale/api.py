"""``memscale.wrap`` / ``plan_of`` / ``unwrap``: the one-line entry point.

``wrap(model, cfg, example_inputs=...)`` profiles the model on the example inputs,
detects the hardware, asks the engine for a plan and applies it. It returns the *same*
module object; ``state_dict()`` is unchanged, outputs and gradients equal the unwrapped
model's. The plan summary is logged at INFO; when the plan needs nothing (skipped, or no
technique on any layer) the model is left untouched and the log says so. The first
training step is measured and, over budget, re-planned once
(:mod:`memscale.runtime.training.verify`). ``training=False`` routes to the inference
runtime (weight pager, KV cache tiers). ``unwrap(model)`` removes everything and
restores the module exactly.

Example:
    >>> from memscale.testing import models
    >>> from memscale.api import plan_of, unwrap, wrap
    >>> model = models.build("gpt", n_layers=2)
    >>> batch = models.example_inputs("gpt", model, batch=2, seq=16)
    >>> wrap(model, memory_budget="64MiB", force_optimize=True, example_inputs=batch) is model
    True
    >>> plan_of(model) is not None
    True
    >>> unwrap(model)
"""
from __future__ import annotations

from typing import Any

from torch import nn

from ._coerce import as_config
from .errors import MemScaleError
from .runtime import hooks


def wrap(model: nn.Module, cfg: Any = None, example_inputs: Any = None, training: bool = True,
         optimizer: Any = "adamw", *, loss_fn: Any = None, autocast: Any = None, verify: bool = True,
         offload_optimizer: bool = False, **config_kwargs: Any) -> nn.Module:
    """Fit ``model``'s training step (or inference) into the configured memory budget; return ``model``.

    Args:
        model: the module to train; modified in place, reversibly (``unwrap``).
        cfg: a ``memscale.Config`` (or a dict of its keys); alternatively pass the
            Config keys as keyword arguments (``memory_budget="4GiB"``).
        example_inputs: one batch as the model's forward takes it (a tensor, a tuple of
            positional arguments or a dict of keyword arguments); used to profile and,
            if the first step is over budget, to re-profile.
        training: ``True`` fits a training step; ``False`` fits inference: the engine
            plans it (within ``cfg.offload`` when a policy is given) and the runtime of
            :mod:`memscale.runtime.inference` applies the plan (weight pager, KV-cache
            tiers; see docs/offload.md). ``example_inputs`` are then of the generation's
            batch and total length: they size the KV cache and the activation reservation.
        optimizer: ``none``, ``sgd``, ``sgd_momentum``, ``adam`` or ``adamw`` (its state
            counts towards the budget), or the ``torch.optim.Adam`` / ``AdamW`` / ``SGD``
            the loop steps with: its ``foreach`` / ``fused`` flags then size the step's
            temporaries (a name assumes torch's default for the device).
        loss_fn: ``loss_fn(output, batch) -> loss`` when the training loop computes the
            loss outside the model's forward. It tells the profiler the call convention:
            the output head + loss is then not fused/tiled (the fusion replaces the
            cross-entropy *inside* forward; a loss outside receives the full logits), so
            the plan never counts on a saving the loop would not realise (MemScale never
            sees the loop's call of its loss: ``wrap`` returns the same module, whose
            forward must return real logits to code outside it). To save the
            logits in such a loop, compute the loss with
            ``memscale.nn.linear_cross_entropy(hidden, head, targets)``. Without
            ``loss_fn``, head + loss fusion is planned only for a forward called with
            ``labels`` in ``example_inputs``.
        autocast: ``torch.bfloat16`` or ``torch.float16`` when the training loop runs the
            step under ``torch.autocast`` of that dtype; None: the autocast active at this
            call, if any (saved activations are counted in the dtypes autocast gives them).
        verify: measure the first step and re-plan once if it exceeds the budget by 5%.
        offload_optimizer: let the engine keep ``optimizer``'s state, and then the
            gradients, on the next tier when no plan of per-layer techniques fits (its
            rule ``optimizer_offload.*`` says why and at what cost). Needs ``optimizer`` to be
            the torch optimizer the loop steps; the loop then steps
            ``memscale.optimizer_for(model)`` (an ``OffloadedOptimizer`` when the plan
            offloads, ``optimizer`` itself otherwise). Opt-in because the loop must step the
            object wrap hands back. docs/training-offload.md.

    Raises:
        memscale.InfeasibleBudgetError: no plan fits (``min_budget_bytes`` is what
            ``memscale.plan`` states for the same graph and Config).
        memscale.ConfigError: an invalid Config, or a technique forced ``on`` that the
            runtime cannot apply (e.g. ``techniques.offload_weights: "on"`` in training).
    """
    if not isinstance(model, nn.Module):
        raise MemScaleError(f"wrap: model must be a torch.nn.Module, got {type(model).__name__}")
    if example_inputs is None:
        raise MemScaleError("wrap: example_inputs is required (one batch as forward takes it) "
                            "to profile the model")
    if training is not True and training is not False:
        raise MemScaleError(f"wrap: training={training!r}; expected True (training step) or False (inference)")
    cfg = as_config(cfg, config_kwargs, caller="wrap", allow_both=False)
    if loss_fn is not None and not callable(loss_fn):
        raise MemScaleError(f"wrap: loss_fn must be callable as loss_fn(output, batch), got "
                            f"{type(loss_fn).__name__}")
    if training is False:
        from .runtime.inference.pager import wrap_for_inference

        inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        return wrap_for_inference(model, cfg, inputs)
    from .runtime.training.wrapped import wrap_training

    wrap_training(model, cfg, example_inputs, optimizer, verify, loss_fn=loss_fn, autocast=autocast,
                  offload_optimizer=offload_optimizer)
    return model


def optimizer_for(model: nn.Module) -> Any:
    """The optimizer the training loop of a wrapped ``model`` steps: the
    ``memscale.optim.OffloadedOptimizer`` its plan asks for (``wrap(...,
    offload_optimizer=True)`` and a plan with ``optimizer_offload``), else the optimizer
    given to ``wrap``.

    Raises:
        memscale.MemScaleError: ``model`` is not wrapped for training.
    """
    from .runtime.training.wrapped import TrainingHandle

    handle = hooks.handle_of(model)
    if not isinstance(handle, TrainingHandle):
        raise MemScaleError(f"optimizer_for: this {type(model).__name__} is not wrapped for training; "
                            "call memscale.wrap(model, cfg, example_inputs, optimizer=opt) first")
    return handle.optimizer_to_step()


def plan_of(model: nn.Module) -> Any:
    """The Plan ``wrap`` applied to ``model`` (the re-plan, if one happened); None if unwrapped."""
    handle = hooks.handle_of(model)
    return None if handle is None else handle.plan


def unwrap(model: nn.Module) -> None:
    """Remove everything ``wrap`` installed; the module is restored exactly. Idempotent."""
    handle = hooks.handle_of(model)
    if handle is not None:
        handle.remove()
