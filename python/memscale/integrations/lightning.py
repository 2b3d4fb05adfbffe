"""A PyTorch Lightning callback that fits the training step into a memory budget.

``MemScaleCallback(config, example_inputs=batch)`` wraps the ``LightningModule`` (or its
submodule ``target``, e.g. ``"model"``) with ``memscale.wrap`` at ``on_fit_start`` (after
Lightning configured the optimizers, so the plan counts the optimizer the run steps with)
and unwraps it at ``on_fit_end``. The plan is the one ``memscale.wrap`` makes for that
module, batch, loss convention and optimizer.

Lightning frees the previous step's gradients only after the next forward (its closure
runs ``training_step``, then ``zero_grad``, then backward), so they would be resident
through that forward, which the plan (like a loop calling ``zero_grad(set_to_none=True)``
before forward) does not count. With ``accumulate_grad_batches=1`` the callback therefore
clears them at ``on_train_batch_start``: the same gradients are used, freed earlier. With
accumulation the gradients must live across the window's forwards: the callback warns that
they are not in the plan.

Example:
    >>> import torch
    >>> from memscale.integrations.lightning import MemScaleCallback
    >>> callback = MemScaleCallback(memory_budget="6GiB", example_inputs=(torch.randn(8, 32),),
    ...                             loss_fn=lambda out, batch: out.square().mean())
    >>> # pytorch_lightning.Trainer(max_steps=100, callbacks=[callback]).fit(module, loader)
    >>> callback.plan is None  # set when fit starts
    True
"""
from __future__ import annotations

from typing import Any, Callable

from pytorch_lightning.callbacks import Callback

from ..errors import MemScaleError
from ._common import callback_config, log, torch_optimizer, unwrap_after_training, wrap_for_trainer


class MemScaleCallback(Callback):
    """Wrap the module Lightning trains under ``config`` (a ``memscale.Config``, a dict of
    its keys, or the keys as keyword arguments) for the whole fit.

    ``example_inputs``: one batch as the wrapped module's forward takes it (a tuple of
    positional arguments or a dict of keyword arguments), or a callable
    ``example_inputs(pl_module)`` returning one. ``loss_fn(output, batch)``: given when
    ``training_step`` computes the loss outside forward (as ``wrap``'s). ``target``: the
    attribute path of the submodule to wrap (None: the LightningModule itself).
    """

    def __init__(self, config: Any = None, *, example_inputs: Any, loss_fn: Callable[..., Any] | None = None,
                 target: str | None = None, autocast: Any = None, verify: bool = True, **config_kwargs: Any) -> None:
        if example_inputs is None:
            raise MemScaleError("MemScaleCallback: example_inputs is required (one batch as the wrapped module's "
                                "forward takes it, or a callable pl_module -> batch)")
        self.config = callback_config(config, config_kwargs)
        self.example_inputs, self.loss_fn, self.target = example_inputs, loss_fn, target
        self.autocast, self.verify = autocast, verify
        self.plan: Any = None
        self._model: Any = None

    def _module(self, pl_module: Any) -> Any:
        if self.target is None:
            return pl_module
        try:
            return pl_module.get_submodule(self.target)
        except AttributeError as missing:
            raise MemScaleError(f"MemScaleCallback: target={self.target!r} is no submodule of "
                                f"{type(pl_module).__name__} ({missing})") from None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        model = self._module(pl_module)
        inputs = self.example_inputs(pl_module) if callable(self.example_inputs) else self.example_inputs
        optimizers = list(getattr(trainer, "optimizers", None) or [])
        optimizer = torch_optimizer(optimizers[0]) if len(optimizers) == 1 else "adamw"
        self.plan = wrap_for_trainer(model, self.config, inputs, optimizer, loss_fn=self.loss_fn,
                                     autocast=self.autocast, verify=self.verify)
        self._model = model
        if trainer.accumulate_grad_batches != 1:
            log.warning("memscale: accumulate_grad_batches=%d keeps gradients resident through the forwards of "
                        "each window; the plan does not count them there", trainer.accumulate_grad_batches)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._model is not None and trainer.accumulate_grad_batches == 1:
            for optimizer in trainer.optimizers:  # Lightning would zero them after this forward
                optimizer.zero_grad(set_to_none=True)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        unwrap_after_training(self._model)
        self._model = None

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.on_fit_end(trainer, pl_module)  # a failed fit leaves the module as it was too
