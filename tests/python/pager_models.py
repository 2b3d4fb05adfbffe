"""GPT-style model for the pager tests: memscale.models.gpt when present, else a local
module of the same structure (wte, wpe, drop, blocks[i].{ln1, attn.{qkv, proj}, ln2, mlp},
ln_f, head) so the tests run before the model zoo is merged."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

try:
    from memscale.models import gpt as _zoo
except ImportError:  # the zoo lives on another branch until it is merged
    _zoo = None


@dataclass(frozen=True)
class _Cfg:
    vocab: int = 512
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int = 512
    max_seq: int = 128
    dropout: float = 0.0


class _Attn(nn.Module):
    def __init__(self, c: _Cfg) -> None:
        super().__init__()
        self.n_heads = c.n_heads
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model)
        self.proj = nn.Linear(c.d_model, c.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (t.view(b, s, self.n_heads, d // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, s, d))


class _MLP(nn.Module):
    def __init__(self, c: _Cfg) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(c.d_model, c.d_ff), nn.GELU(), nn.Linear(c.d_ff, c.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, c: _Cfg) -> None:
        super().__init__()
        self.ln1, self.attn, self.ln2, self.mlp = nn.LayerNorm(c.d_model), _Attn(c), nn.LayerNorm(c.d_model), _MLP(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class _GPT(nn.Module):
    def __init__(self, c: _Cfg) -> None:
        super().__init__()
        self.config = c
        self.wte, self.wpe = nn.Embedding(c.vocab, c.d_model), nn.Embedding(c.max_seq, c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(_Block(c) for _ in range(c.n_layers))
        self.ln_f = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device)))
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_f(x))


def build_gpt(seed: int = 0, **overrides) -> nn.Module:
    """A GPT-style decoder in eval mode, deterministic from ``seed``."""
    if _zoo is not None:
        return _zoo.build(seed=seed, **overrides).eval()
    torch.manual_seed(seed)
    return _GPT(replace(_Cfg(), **overrides)).eval()


def prompt(model: nn.Module, batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab, (batch, seq), generator=g)
