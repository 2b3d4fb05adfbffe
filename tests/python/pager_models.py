"""GPT-style model and prompts for the pager and scheduler tests (memscale.testing.models.gpt)."""
from __future__ import annotations

import torch
from torch import nn

from memscale.testing.models import gpt


def build_gpt(seed: int = 0, **overrides) -> nn.Module:
    """A GPT-style decoder in eval mode, deterministic from ``seed``."""
    return gpt.build(seed=seed, **overrides).eval()


def prompt(model: nn.Module, batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab, (batch, seq), generator=g)
