"""A Hugging Face ``Trainer`` callback that fits the training step into a memory budget.

``MemScaleCallback(config)`` wraps the model the Trainer trains with ``memscale.wrap``
(the same Config, the Trainer's own optimizer, one batch of its training data as the
example inputs) when training begins, and unwraps it when training ends: the plan is the
one ``memscale.wrap`` makes for that model, batch and optimizer.

Example:
    >>> from transformers import Trainer, TrainingArguments
    >>> from memscale.integrations.transformers import MemScaleCallback
    >>> callback = MemScaleCallback(memory_budget="6GiB")
    >>> # Trainer(model, TrainingArguments(...), train_dataset=ds, callbacks=[callback]).train()
    >>> callback.plan is None  # set when training begins
    True
"""
from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from ..errors import MemScaleError
from ._common import callback_config, torch_optimizer, unwrap_after_training, wrap_for_trainer


def first_batch(train_dataloader: Any, batch_size: int, device: Any) -> dict[str, Any]:
    """The Trainer's first batch of size ``batch_size`` built from its dataset and collator
    directly: iterating the dataloader would draw its sampler's seed from the global random
    state and so change the run's data order."""
    dataset = getattr(train_dataloader, "dataset", None)
    collate = getattr(train_dataloader, "collate_fn", None)
    if dataset is None or collate is None or len(dataset) == 0:
        raise MemScaleError("MemScaleCallback: the Trainer's train_dataloader has no dataset/collate_fn to take an "
                            "example batch from; pass example_inputs=")
    batch = collate([dataset[i] for i in range(min(batch_size, len(dataset)))])
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in dict(batch).items()}


class MemScaleCallback(TrainerCallback):
    """Wrap the Trainer's model under ``config`` (a ``memscale.Config``, a dict of its keys,
    or the keys as keyword arguments) at ``on_train_begin``; unwrap at ``on_train_end``.

    ``example_inputs``: the batch to profile with (keyword arguments of forward); default:
    the first ``per_device_train_batch_size`` samples of the training set through the
    Trainer's collator. The model computes its loss from ``labels`` (the Trainer's
    convention), so the profile sees the loss inside forward. ``verify``: as in ``wrap``.
    After training begins, ``plan`` is the applied plan.
    """

    def __init__(self, config: Any = None, *, example_inputs: Any = None, autocast: Any = None,
                 verify: bool = True, **config_kwargs: Any) -> None:
        self.config = callback_config(config, config_kwargs)
        self.example_inputs, self.autocast, self.verify = example_inputs, autocast, verify
        self.plan: Any = None
        self._model: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       train_dataloader: Any = None, **kwargs: Any) -> None:
        if model is None:
            raise MemScaleError("MemScaleCallback: the Trainer passed no model to on_train_begin")
        inputs = self.example_inputs
        if inputs is None:
            inputs = first_batch(train_dataloader, args.per_device_train_batch_size, next(model.parameters()).device)
        self.plan = wrap_for_trainer(model, self.config, inputs, torch_optimizer(optimizer), loss_fn=None,
                                     autocast=self.autocast, verify=self.verify)
        self._model = model

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        unwrap_after_training(self._model)
        self._model = None
