"""BERT-style encoder-only transformer with a masked-LM head.

The module layout follows Hugging Face BERT (``embeddings``, ``encoder.layer[i]``,
``attention.self.query``...) so that the profiler is exercised on nested block lists and
on attention written with explicit matmul + softmax rather than fused SDPA.

Example:
    >>> from memscale.testing.models import encoder
    >>> model = encoder.build(n_layers=2)
    >>> loss = model(*encoder.example_inputs(model, batch=2, seq=16))
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._common import apply_overrides, check_positive, randint, seeded


@dataclass(frozen=True)
class EncoderConfig:
    """Sizes of a BERT-style encoder; names mirror Hugging Face's ``BertConfig``."""

    vocab_size: int = 512
    hidden_size: int = 128
    num_attention_heads: int = 4
    num_hidden_layers: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 128
    type_vocab_size: int = 2
    dropout: float = 0.0
    layer_norm_eps: float = 1e-12

    def validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_attention_heads", "num_hidden_layers",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            check_positive(name, getattr(self, name))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_attention_heads ({self.num_attention_heads})")


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        pos = torch.arange(seq, device=input_ids.device)
        types = torch.zeros_like(input_ids)
        x = self.word_embeddings(input_ids) + self.position_embeddings(pos) + self.token_type_embeddings(types)
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention with explicit scores (matmul, softmax, matmul)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.num_attention_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.dropout)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, s, _ = t.shape
        return t.view(b, s, self.num_attention_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        if mask is not None:
            scores = scores + mask
        probs = self.dropout(scores.softmax(dim=-1))
        b, _, s, _ = q.shape
        return (probs @ v).transpose(1, 2).reshape(b, s, -1)


class AttentionOutput(nn.Module):
    """Output projection, dropout, residual and post-LayerNorm."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class Attention(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.self = SelfAttention(cfg)
        self.output = AttentionOutput(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


class Layer(nn.Module):
    """Post-LN encoder layer: attention sub-layer, then GELU feed-forward sub-layer."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.output = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attention(x, mask)
        h = self.dropout(self.output(F.gelu(self.intermediate(x))))
        return self.LayerNorm(h + x)


class Encoder(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, mask)
        return x


class MLMHead(nn.Module):
    """Transform (dense, GELU, LayerNorm) then decoder to the vocabulary."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.LayerNorm(F.gelu(self.dense(x))))


class BertLM(nn.Module):
    """Encoder-only masked LM. ``forward(input_ids, attention_mask=None, labels=None)``."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)
        self.cls = MLMHead(cfg)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        mask = None
        if attention_mask is not None:
            # (B, S) of 1/0 -> additive (B, 1, 1, S) of 0/-inf-like
            mask = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * -1e4
        logits = self.cls(self.encoder(self.embeddings(input_ids), mask))
        if labels is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


def build(seed: int = 0, **overrides: Any) -> BertLM:
    """Build a BERT-style masked LM with ``EncoderConfig`` fields overridden by keyword."""
    cfg = apply_overrides(EncoderConfig(), overrides)
    with seeded(seed):
        return BertLM(cfg)


def example_inputs(model: BertLM, batch: int = 2, seq: int | None = None, labels: bool = True,
                   seed: int = 0, device: torch.device | str | None = None) -> tuple[Any, ...]:
    """``(input_ids, attention_mask, labels)`` (mask all ones) or ``(input_ids,)`` without labels."""
    cfg = model.config
    seq = cfg.max_position_embeddings // 2 if seq is None else seq
    check_positive("batch", batch)
    check_positive("seq", seq)
    ids = randint(cfg.vocab_size, (batch, seq), seed, device)
    if not labels:
        return (ids,)
    mask = torch.ones(batch, seq, dtype=torch.long, device=device)
    return (ids, mask, randint(cfg.vocab_size, (batch, seq), seed + 1, device))
