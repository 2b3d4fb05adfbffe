"""Hugging Face causal LMs from configs (nothing downloaded) sized for the offloaded
generation benchmark, and the one generation call every system in it runs.

Sizes: ``full`` makes weights of a few hundred MB (a block of tens of MB, so reading one
from disk takes about as long as computing it for the batch); ``quick`` is the smoke run's
tenth of that. The vocabulary is kept small so the paged blocks, not the embeddings,
hold most of the bytes, and blocks are small enough beside 0.25x of the weights that
two of them (the one computing, the one being read) fit with the KV cache.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

FAMILIES = ("llama", "gpt2", "qwen2")

_SIZES: dict[str, dict[str, int]] = {
    "full": dict(hidden=1024, inner=2816, layers=8, heads=16, kv_heads=8, vocab=8192),
    "quick": dict(hidden=384, inner=768, layers=10, heads=6, kv_heads=3, vocab=2048),
}
# GPT-2 has no KV-head grouping and a 4x MLP; deeper and narrower for similar bytes.
_GPT2_SIZES: dict[str, dict[str, int]] = {
    "full": dict(hidden=768, layers=12, heads=12, vocab=8192),
    "quick": dict(hidden=320, layers=10, heads=5, vocab=2048),
}


def describe(family: str, size: str) -> str:
    """The record's model name, e.g. ``hf llama h1024 L8 ff2816 kv8 vocab8192``."""
    if family == "gpt2":
        s = _GPT2_SIZES[size]
        return f"hf gpt2 h{s['hidden']} L{s['layers']} vocab{s['vocab']}"
    s = _SIZES[size]
    return f"hf {family} h{s['hidden']} L{s['layers']} ff{s['inner']} kv{s['kv_heads']} vocab{s['vocab']}"


def build(family: str, size: str, seed: int = 0) -> nn.Module:
    """The model in eval mode; the same ``seed`` gives the same weights in any process."""
    import transformers

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if size not in _SIZES:
        raise ValueError(f"size must be one of {sorted(_SIZES)}, got {size!r}")
    torch.manual_seed(seed)
    if family == "gpt2":
        s = _GPT2_SIZES[size]
        config = transformers.GPT2Config(vocab_size=s["vocab"], n_positions=256, n_embd=s["hidden"],
                                         n_layer=s["layers"], n_head=s["heads"])
        return transformers.GPT2LMHeadModel(config).eval()
    s = _SIZES[size]
    config_cls, model_cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                             "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[family]
    config = config_cls(vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["inner"],
                        num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                        num_key_value_heads=s["kv_heads"], max_position_embeddings=256)
    return model_cls(config).eval()


def prompt(model: nn.Module, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (batch, length), generator=gen)


def generate(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy ``model.generate`` of exactly ``new_tokens`` per sequence (no early stop at a
    random model's end-of-sequence token, so every system computes the same steps)."""
    kwargs: dict[str, Any] = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                  attention_mask=torch.ones_like(ids), pad_token_id=0)
    with torch.no_grad():
        return model.generate(ids, **kwargs)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the distinct parameter storages (tied weights once)."""
    seen: dict[int, int] = {}
    for p in model.parameters():
        seen[p.untyped_storage().data_ptr()] = p.untyped_storage().nbytes()
    return sum(seen.values())
