"""T5-style encoder-decoder (simplified: no relative position bias, learned-free attention).

Shared token embedding, RMS-normed pre-norm blocks, ReLU feed-forward, decoder blocks with
causal self-attention and cross-attention over the encoder output, LM head.

Example:
    >>> from memscale.testing.models import t5
    >>> model = t5.build(num_layers=1)
    >>> loss = model(*t5.example_inputs(model, batch=2, seq=16))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._common import apply_overrides, check_positive, randint, seeded


@dataclass(frozen=True)
class T5Config:
    """Sizes of the T5-style model; names mirror Hugging Face's ``T5Config``."""

    vocab_size: int = 512
    d_model: int = 128
    d_kv: int = 32
    d_ff: int = 512
    num_heads: int = 4
    num_layers: int = 2
    num_decoder_layers: int = 2
    max_seq: int = 128
    dropout: float = 0.0

    def validate(self) -> None:
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads", "num_layers",
                     "num_decoder_layers", "max_seq"):
            check_positive(name, getattr(self, name))


class T5LayerNorm(nn.Module):
    """RMS norm without mean subtraction or bias (as in T5)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class T5Attention(nn.Module):
    """Multi-head attention; keys/values come from ``kv`` (cross) or ``x`` (self)."""

    def __init__(self, cfg: T5Config, causal: bool) -> None:
        super().__init__()
        self.n_heads = cfg.num_heads
        self.d_kv = cfg.d_kv
        inner = cfg.num_heads * cfg.d_kv
        self.q = nn.Linear(cfg.d_model, inner, bias=False)
        self.k = nn.Linear(cfg.d_model, inner, bias=False)
        self.v = nn.Linear(cfg.d_model, inner, bias=False)
        self.o = nn.Linear(inner, cfg.d_model, bias=False)
        self.causal = causal
        self.dropout = cfg.dropout

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, s, _ = t.shape
        return t.view(b, s, self.n_heads, self.d_kv).transpose(1, 2)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None) -> torch.Tensor:
        src = x if kv is None else kv
        q, k, v = self._heads(self.q(x)), self._heads(self.k(src)), self._heads(self.v(src))
        # T5 does not scale scores by 1/sqrt(d_kv): scale=1.0 keeps that convention.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, scale=1.0,
                                           dropout_p=self.dropout if self.training else 0.0)
        b, _, s, _ = y.shape
        return self.o(y.transpose(1, 2).reshape(b, s, -1))


class T5FF(nn.Module):
    """ReLU feed-forward ``wi`` -> ReLU -> ``wo``."""

    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.wi = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(self.drop(F.relu(self.wi(x))))


class EncoderBlock(nn.Module):
    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.ln1 = T5LayerNorm(cfg.d_model)
        self.self_attn = T5Attention(cfg, causal=False)
        self.ln2 = T5LayerNorm(cfg.d_model)
        self.ff = T5FF(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.ln1(x))
        return x + self.ff(self.ln2(x))


class DecoderBlock(nn.Module):
    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.ln1 = T5LayerNorm(cfg.d_model)
        self.self_attn = T5Attention(cfg, causal=True)
        self.ln2 = T5LayerNorm(cfg.d_model)
        self.cross_attn = T5Attention(cfg, causal=False)
        self.ln3 = T5LayerNorm(cfg.d_model)
        self.ff = T5FF(cfg)

    def forward(self, x: torch.Tensor, enc: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.ln1(x))
        x = x + self.cross_attn(self.ln2(x), enc)
        return x + self.ff(self.ln3(x))


class T5Stack(nn.Module):
    """A stack of blocks followed by a final norm; the decoder stack takes the encoder output."""

    def __init__(self, cfg: T5Config, decoder: bool) -> None:
        super().__init__()
        n = cfg.num_decoder_layers if decoder else cfg.num_layers
        block = DecoderBlock if decoder else EncoderBlock
        self.blocks = nn.ModuleList(block(cfg) for _ in range(n))
        self.final_layer_norm = T5LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, enc: torch.Tensor | None = None) -> torch.Tensor:
        x = self.drop(x)
        for blk in self.blocks:
            x = blk(x) if enc is None else blk(x, enc)
        return self.drop(self.final_layer_norm(x))


class T5(nn.Module):
    """``forward(input_ids, decoder_input_ids, labels=None)`` -> logits or mean cross-entropy."""

    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = T5Stack(cfg, decoder=False)
        self.decoder = T5Stack(cfg, decoder=True)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        enc = self.encoder(self.shared(input_ids))
        dec = self.decoder(self.shared(decoder_input_ids), enc)
        logits = self.lm_head(dec)
        if labels is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def build(seed: int = 0, **overrides: Any) -> T5:
    """Build the T5-style model with ``T5Config`` fields overridden by keyword."""
    cfg = apply_overrides(T5Config(), overrides)
    with seeded(seed):
        return T5(cfg)


def example_inputs(model: T5, batch: int = 2, seq: int | None = None, labels: bool = True,
                   seed: int = 0, device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
    """``(input_ids, decoder_input_ids[, labels])``; encoder and decoder both get ``seq`` tokens."""
    cfg = model.config
    seq = cfg.max_seq // 2 if seq is None else seq
    check_positive("batch", batch)
    check_positive("seq", seq)
    ids = randint(cfg.vocab_size, (batch, seq), seed, device)
    dec = randint(cfg.vocab_size, (batch, seq), seed + 1, device)
    if not labels:
        return (ids, dec)
    return (ids, dec, randint(cfg.vocab_size, (batch, seq), seed + 2, device))
