"""ViT-style image classifier: conv patch embedding, class token, encoder blocks, head.

Attention uses ``nn.MultiheadAttention`` (batch_first), blocks live in an ``nn.Sequential``.

Example:
    >>> from memscale.testing.models import vit
    >>> model = vit.build(depth=2)
    >>> loss = model(*vit.example_inputs(model, batch=2))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._common import apply_overrides, check_positive, image_inputs, seeded


@dataclass(frozen=True)
class ViTConfig:
    """Sizes of a ViT-style classifier."""

    image_size: int = 32
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 10
    embed_dim: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0

    def validate(self) -> None:
        for name in ("image_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth",
                     "num_heads", "mlp_ratio"):
            check_positive(name, getattr(self, name))
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size})")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    """Pre-LN encoder block around ``nn.MultiheadAttention``."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim)
        self.attn = nn.MultiheadAttention(cfg.embed_dim, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(cfg.embed_dim)
        self.mlp = Mlp(cfg.embed_dim, cfg.embed_dim * cfg.mlp_ratio, cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """``forward(images, labels=None)`` -> class logits, or mean cross-entropy with labels."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        cfg.validate()
        self.config = cfg
        n_patches = (cfg.image_size // cfg.patch_size) ** 2
        self.patch_embed = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n_patches + 1, cfg.embed_dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(cfg) for _ in range(cfg.depth)))
        self.norm = nn.LayerNorm(cfg.embed_dim)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        logits = self.head(x[:, 0])
        if labels is None:
            return logits
        return F.cross_entropy(logits, labels)


def build(seed: int = 0, **overrides: Any) -> ViT:
    """Build a ViT with ``ViTConfig`` fields overridden by keyword, deterministically from ``seed``."""
    cfg = apply_overrides(ViTConfig(), overrides)
    with seeded(seed):
        return ViT(cfg)


def example_inputs(model: ViT, batch: int = 2, seq: int | None = None, labels: bool = True,
                   seed: int = 0, device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
    """``(images, labels)`` with images ``(batch, in_chans, image_size, image_size)``.

    ``seq`` must be None: the token count follows from the image and patch sizes.
    """
    cfg = model.config
    return image_inputs("vit", cfg.in_chans, cfg.image_size, cfg.num_classes, batch, seq, labels, seed, device)
