"""LSTM language model: embedding, multi-layer ``nn.LSTM`` (batch_first), linear head.

Example:
    >>> from memscale.testing.models import lstm
    >>> model = lstm.build(num_layers=1)
    >>> loss = model(*lstm.example_inputs(model, batch=2, seq=16))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._common import apply_overrides, check_positive, seeded, token_inputs


@dataclass(frozen=True)
class LSTMConfig:
    """Sizes of the LSTM language model."""

    vocab: int = 512
    embed_dim: int = 128
    hidden: int = 128
    num_layers: int = 2
    max_seq: int = 64
    dropout: float = 0.0

    def validate(self) -> None:
        for name in ("vocab", "embed_dim", "hidden", "num_layers", "max_seq"):
            check_positive(name, getattr(self, name))


class LSTMLM(nn.Module):
    """``forward(input_ids, labels=None)`` -> logits ``(B, S, vocab)``, or mean cross-entropy."""

    def __init__(self, cfg: LSTMConfig) -> None:
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.embedding = nn.Embedding(cfg.vocab, cfg.embed_dim)
        self.lstm = nn.LSTM(cfg.embed_dim, cfg.hidden, num_layers=cfg.num_layers, batch_first=True,
                            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        self.head = nn.Linear(cfg.hidden, cfg.vocab)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(input_ids))
        logits = self.head(out)
        if labels is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def build(seed: int = 0, **overrides: Any) -> LSTMLM:
    """Build the LSTM LM with ``LSTMConfig`` fields overridden by keyword."""
    cfg = apply_overrides(LSTMConfig(), overrides)
    with seeded(seed):
        return LSTMLM(cfg)


def example_inputs(model: LSTMLM, batch: int = 2, seq: int | None = None, labels: bool = True,
                   seed: int = 0, device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
    """``(input_ids, labels)`` of shape ``(batch, seq)``; seq defaults to max_seq/2."""
    cfg = model.config
    return token_inputs(cfg.vocab, batch, cfg.max_seq // 2 if seq is None else seq, labels, seed, device)
