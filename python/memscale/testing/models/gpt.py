"""GPT-style decoder: token + position embedding, pre-LN causal blocks, tied-free LM head.

``model(ids)`` returns the logits and ``model(ids, labels)`` the mean cross-entropy loss.
Called the transformers way, with a KV cache (``past_key_values=`` a transformers
``Cache``, or ``use_cache=True`` for a fresh ``DynamicCache``), each block appends its keys
and values with ``cache.update(k, v, layer_idx)`` and attends over what the cache hands
back, and the call returns a :class:`CausalLMOutput` (``.logits``, ``.past_key_values``,
``.loss``): the cache protocol ``memscale.offload.generate`` drives for any causal LM.

Example:
    >>> from memscale.testing.models import gpt
    >>> model = gpt.build(n_layers=2)
    >>> ids, labels = gpt.example_inputs(model, batch=2, seq=16)
    >>> loss = model(ids, labels)
    >>> out = model(ids, use_cache=True)
    >>> out.past_key_values.get_seq_length(), tuple(out.logits.shape)
    (16, (2, 16, 512))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

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

    def forward(self, x: torch.Tensor, cache: Any = None, layer_idx: int = 0) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        # (B, S, D) -> (B, H, S, D/H)
        q, k, v = (t.view(b, s, self.n_heads, d // self.n_heads).transpose(1, 2) for t in (q, k, v))
        mask, causal = None, True
        if cache is not None:
            k, v = cache.update(k, v, layer_idx)  # every token so far: (B, H, T, D/H)
            t = k.shape[2]
            if t > s:  # new tokens after cached ones: each sees the past and itself (bottom-right causal)
                causal = False
                mask = None if s == 1 else torch.ones(s, t, dtype=torch.bool, device=x.device).tril(t - s)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
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

    def forward(self, x: torch.Tensor, cache: Any = None, layer_idx: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache, layer_idx)
        return x + self.mlp(self.ln2(x))


@dataclass
class CausalLMOutput:
    """What a call with a KV cache returns (the fields transformers' outputs name)."""

    logits: torch.Tensor
    past_key_values: Any
    loss: Optional[torch.Tensor] = None


class GPT(nn.Module):
    """GPT-style decoder. ``forward(input_ids, labels=None)`` -> logits, or mean CE loss;
    with ``past_key_values`` / ``use_cache=True`` -> :class:`CausalLMOutput`."""

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

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, *,
                past_key_values: Any = None, use_cache: bool | None = None) -> Any:
        cache = past_key_values
        if cache is None and use_cache:
            from transformers import DynamicCache  # only the cached call needs transformers

            cache = DynamicCache()
        past = cache.get_seq_length() if cache is not None else 0
        seq = past + input_ids.shape[1]
        if seq > self.config.max_seq:
            raise ValueError(f"input_ids has seq {seq} > max_seq {self.config.max_seq}"
                             + (f" ({past} cached + {input_ids.shape[1]} new)" if past else ""))
        pos = torch.arange(past, seq, device=input_ids.device)
        x = self.drop(self.wte(input_ids) + self.wpe(pos))
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i) if cache is not None else block(x)
        logits = self.head(self.ln_f(x))
        loss = None if labels is None else F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        if cache is not None:
            return CausalLMOutput(logits, cache, loss)
        return logits if loss is None else loss


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
