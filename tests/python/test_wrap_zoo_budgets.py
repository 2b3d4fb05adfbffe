"""Issue 13, acceptance 1, over the reference zoo and a user's own CNN (budget_sweep.py).

Each zoo model with its loss inside (``labels``) and outside (the plain loop: ``loss = F.cross_entropy(model(x)..., y)``). The CNN is a user
module nobody here wrote: Conv -> BatchNorm -> in-place ReLU -> Dropout stages in one
``nn.Sequential`` and a Linear head, trained with its loss outside. Layer discovery makes
that Sequential of leaf modules one layer (profiler/discovery.py splits a Sequential only
into repeated composite blocks), which no technique can
shrink: ``wrap`` states a minimum near the unoptimized peak, and it fits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from budget_sweep import sweep
from memscale.testing import models


@dataclass
class Case:
    """A fresh model, its inputs and the loop's loss (None: the model's own)."""

    model: nn.Module
    inputs: Any
    loss_fn: Callable[[Any], torch.Tensor] | None = None
    autocast: torch.dtype | None = None


SIZES = {"gpt": dict(n_layers=3, d_model=64, d_ff=256, vocab=512, max_seq=64, dropout=0.1)}
BATCH = 4


def zoo_case(name: str, labels: bool) -> Case:
    model = models.build(name, **SIZES.get(name, {}))
    if labels:
        return Case(model, models.example_inputs(name, model, batch=BATCH, labels=True))
    *inputs, targets = models.example_inputs(name, model, batch=BATCH, labels=True)

    def loss_fn(logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, -2) if logits.dim() > 2 else logits, targets.flatten())
    return Case(model, tuple(inputs), loss_fn)


#: Every zoo model with its loss inside (labels) and outside (the plain loop on its logits).
ZOO = [(name, labels) for name in models.MODELS for labels in (True, False)]


@pytest.mark.parametrize("name, labels", ZOO, ids=[f"{n}-{'loss_inside' if lab else 'loss_outside'}" for n, lab in ZOO])
def test_zoo_fits_every_budget_it_accepts(name: str, labels: bool) -> None:
    result = sweep(lambda: zoo_case(name, labels))
    print(f"\n{name}/{'loss_inside' if labels else 'loss_outside'}: {result}")


class UserCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in (16, 32, 64):
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.Dropout(0.1), nn.Conv2d(width, width, 3, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(64 * 4 * 4, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(images), 1))


def cnn_case() -> Case:
    torch.manual_seed(0)
    model = UserCNN()
    gen = torch.Generator().manual_seed(0)
    images, targets = torch.randn(16, 3, 32, 32, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    return Case(model, (images,), lambda logits: F.cross_entropy(logits, targets))


def test_user_cnn_with_batchnorm_and_inplace_relu_fits_or_is_refused() -> None:
    result = sweep(cnn_case)
    print(f"\nuser CNN: {result}")
