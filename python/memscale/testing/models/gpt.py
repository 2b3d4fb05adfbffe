"""GPT-style decoder: token + position embedding, pre-LN causal blocks, tied-free LM head.

Example:
    >>> from memscale.testing.models import gpt
    >>> model = gpt.build(n_layers=2)
    >>> ids, labels = gpt.example_inputs(model, batch=2, seq=16)
    >>> loss = model(ids, labels)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._common import apply_overrides, check_positive, seeded, token_inputs


@dataclass(frozen=True)
class GPTConfig:
    """Sizes of a GPT-style decoder (defaults are small: a CPU step takes milliseconds)."""

    vocab: int = 512
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int = 512
    max_seq: int = 128
    dropout: float = 0.0

    def validate(self) -> None:
        for name in ("vocab", "d_model", "n_heads", "n_layers", "d_ff", "max_seq"):
            check_positive(name, getattr(self, name))
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused QKV projection."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        # (B, S, D) -> (B, H, S, D/H)
        q, k, v = (t.view(b, s, self.n_heads, d // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(b, s, d))


class MLP(nn.Module):
    """Position-wise GELU MLP: fc1 -> GELU -> fc2."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """GPT-style decoder. ``forward(input_ids, labels=None)`` -> logits, or mean CE loss."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab, cfg.d_model)
        self.wpe = nn.Embedding(cfg.max_seq, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab, bias=False)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        seq = input_ids.shape[1]
        if seq > self.config.max_seq:
            raise ValueError(f"input_ids has seq {seq} > max_seq {self.config.max_seq}")
        pos = torch.arange(seq, device=input_ids.device)
        x = self.drop(self.wte(input_ids) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        if labels is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def build(seed: int = 0, **overrides: Any) -> GPT:
    """Build a GPT with ``GPTConfig`` fields overridden by keyword, deterministically from ``seed``."""
    cfg = apply_overrides(GPTConfig(), overrides)
    with seeded(seed):
        return GPT(cfg)


def example_inputs(model: GPT, batch: int = 2, seq: int | None = None, labels: bool = True,
                   seed: int = 0, device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
    """``(input_ids,)`` or ``(input_ids, labels)`` of shape ``(batch, seq)``; seq defaults to max_seq/2."""
    cfg = model.config
    return token_inputs(cfg.vocab, batch, cfg.max_seq // 2 if seq is None else seq, labels, seed, device)
