"""Greedy generation with a KV cache, weights paged by the wrapper, KV cache and
activations placed per the tier policy.

Two model families:

* GPT-style modules with ``wte``, ``wpe``, ``blocks[i].{ln1, attn.{qkv, proj, n_heads}, ln2,
  mlp}``, ``ln_f``, ``head`` (memscale.testing.models.gpt): an incremental decoder here, with the
  KV cache of each block on its tier and the hidden state parked on its boundary's tier
  while the next block's weights become resident.
* Hugging Face causal LMs (any model generating with a transformers ``Cache``): their own
  forward, with a :class:`memscale.runtime.inference.hf_cache.TieredCache` that keeps each
  layer's K/V on its tier; the activations between their layers stay on the device.

Example:
    >>> import torch
    >>> from memscale.testing.models import gpt
    >>> from memscale.runtime.inference import generate
    >>> model = gpt.build(n_layers=2).eval()
    >>> ids, = gpt.example_inputs(model, batch=2, seq=8, labels=False)
    >>> out = generate(model, ids, max_new_tokens=4)
    >>> tuple(out.tokens.shape)
    (2, 12)
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from .pager import handle_of
from .kv_cache import ActivationTiers, KVCache
from .tiers import TENSOR_TYPES, TierPolicy, layer_tiers, tier_policy


@dataclass
class GenerationResult:
    """Tokens (prompt + generated), optional per-step logits, timings and placements."""

    tokens: torch.Tensor
    logits: list[torch.Tensor] | None
    new_tokens: int
    prefill_seconds: float
    decode_seconds: float
    tiers: dict[str, dict[str, float]]
    kv_bytes: dict[str, int] = field(default_factory=dict)
    kv_layer_tiers: list[str] = field(default_factory=list)
    activation_tiers: list[str] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens (batch x new) per second of prefill + decode."""
        total = self.prefill_seconds + self.decode_seconds
        return self.tokens.shape[0] * self.new_tokens / total if total > 0 else 0.0


def is_gpt_style(model: nn.Module) -> bool:
    blocks = getattr(model, "blocks", None)
    return (all(hasattr(model, a) for a in ("wte", "wpe", "ln_f", "head")) and isinstance(blocks, nn.ModuleList)
            and len(blocks) > 0 and hasattr(blocks[0], "attn") and hasattr(blocks[0].attn, "qkv"))


def _resolve_tiers(model: nn.Module, tiers: TierPolicy | Mapping[str, Any] | None) -> TierPolicy:
    """``tiers`` over the wrapped model's policy (its Config.tiers), over all-on-device."""
    if isinstance(tiers, TierPolicy):
        return tiers
    handle = handle_of(model)
    base = handle.tiers if handle is not None else TierPolicy()
    merged: dict[str, Any] = {t: {"gpu": getattr(base, t).gpu, "cpu": getattr(base, t).cpu} for t in TENSOR_TYPES}
    merged.update(dict(tiers or {}))
    return tier_policy(overrides=merged)


def generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int, *,
             tiers: TierPolicy | Mapping[str, Any] | None = None, disk_dir: str | None = None,
             return_logits: bool = False) -> GenerationResult:
    """Greedy decoding of ``max_new_tokens`` tokens after ``input_ids`` (batch, prompt).

    ``tiers`` overrides the KV-cache / activation placement of the wrapped model's
    config (``{"kv_cache": {"gpu": 50, "cpu": 0}}``: half the layers' caches on disk);
    ``disk_dir`` holds their files (default: the weights' directory, else a private
    temp dir). Works on wrapped and unwrapped models alike.
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens: got {max_new_tokens!r}, expected an integer >= 1")
    if input_ids.dim() != 2:
        raise ConfigError(f"input_ids: got shape {tuple(input_ids.shape)}, expected (batch, prompt)")
    policy = _resolve_tiers(model, tiers)
    handle = handle_of(model)
    if disk_dir is None and handle is not None:
        disk_dir = handle.storage.dir
    with torch.no_grad():
        if is_gpt_style(model):
            return _generate_gpt(model, input_ids, max_new_tokens, policy, disk_dir, return_logits)
        if _is_hf_causal_lm(model):
            return _generate_hf(model, input_ids, max_new_tokens, policy, disk_dir, return_logits)
    raise ConfigError(f"model: {type(model).__name__} is neither GPT-style (wte, wpe, blocks, ln_f, head) nor a "
                      "Hugging Face causal LM taking past_key_values")


def _use(model: nn.Module) -> Callable[[nn.Module], Any]:
    handle = handle_of(model)
    return handle.use if handle is not None else (lambda _m: nullcontext())


def _attention_step(block: nn.Module, x: torch.Tensor, cache: KVCache, layer: int, prefill: bool) -> torch.Tensor:
    """One block on ``x`` (batch, new, d), appending its K/V to the cache.

    The prefill runs the same operations as the block's own forward (causal attention over
    the fresh K/V), so its logits equal the model's forward exactly.
    """
    attn = block.attn
    h = block.ln1(x)
    b, s, d = h.shape
    q, k, v = attn.qkv(h).split(d, dim=-1)
    q, k, v = (t.view(b, s, attn.n_heads, d // attn.n_heads).transpose(1, 2) for t in (q, k, v))
    cache.append(layer, k, v)
    if prefill:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        keys, values = cache.get(layer)
        y = F.scaled_dot_product_attention(q, keys, values)
    x = x + attn.proj(y.transpose(1, 2).reshape(b, s, d))
    return x + block.mlp(block.ln2(x))


def _generate_gpt(model: nn.Module, ids: torch.Tensor, n_new: int, policy: TierPolicy, disk_dir: str | None,
                  return_logits: bool) -> GenerationResult:
    cfg = model.config
    batch, prompt = ids.shape
    total = prompt + n_new
    if total > cfg.max_seq:
        raise ConfigError(f"max_new_tokens: prompt {prompt} + {n_new} new = {total} tokens exceed the model's "
                          f"max_seq {cfg.max_seq}")
    blocks = model.blocks
    dtype = model.wte.weight.dtype
    device = ids.device
    cuda = device.type == "cuda"
    kv_tiers = layer_tiers(len(blocks), policy.kv_cache, cuda)
    act_tiers = layer_tiers(len(blocks), policy.activations, cuda)
    head_dim = cfg.d_model // cfg.n_heads
    act_bytes = batch * prompt * cfg.d_model * torch.empty((), dtype=dtype).element_size()
    use = _use(model)
    cache = KVCache(len(blocks), batch, cfg.n_heads, head_dim, total, dtype, device, kv_tiers, disk_dir)
    acts = None
    try:
        acts = ActivationTiers(act_tiers, device, act_bytes, disk_dir)
        tokens = ids
        logits_out: list[torch.Tensor] = []
        start = time.perf_counter()
        prefill_seconds = 0.0
        step_ids = ids
        for step in range(n_new):
            prefill = step == 0
            t0 = tokens.shape[1] - step_ids.shape[1]
            pos = torch.arange(t0, t0 + step_ids.shape[1], device=device)
            x = model.drop(model.wte(step_ids) + model.wpe(pos))
            for i, block in enumerate(blocks):
                with use(block):
                    x = _attention_step(block, x, cache, i, prefill)
                parked = acts.park(i, x)
                del x
                x = acts.fetch(parked)
            logits = model.head(model.ln_f(x))[:, -1]
            if return_logits:
                logits_out.append(logits.clone())
            next_ids = logits.argmax(dim=-1, keepdim=True)
            tokens = torch.cat([tokens, next_ids], dim=1)
            step_ids = next_ids
            if prefill:
                prefill_seconds = time.perf_counter() - start
        decode_seconds = time.perf_counter() - start - prefill_seconds
        return GenerationResult(tokens, logits_out if return_logits else None, n_new, prefill_seconds, decode_seconds,
                                policy.to_dict(), cache.bytes_by_tier(), kv_tiers, act_tiers)
    finally:
        cache.close()
        if acts is not None:
            acts.close()


def _is_hf_causal_lm(model: nn.Module) -> bool:
    try:
        from .hf_cache import is_hf_causal_lm
    except ImportError:  # transformers is not installed
        return False
    return is_hf_causal_lm(model)


def _generate_hf(model: nn.Module, ids: torch.Tensor, n_new: int, policy: TierPolicy, disk_dir: str | None,
                 return_logits: bool) -> GenerationResult:
    from .hf_cache import _cache_kwarg, tiered_cache

    if policy.activations.gpu < 100.0:
        raise ConfigError("tiers.activations: Hugging Face models keep the activations between their layers on "
                          "the device; gpu must be 100 for them (the KV cache and the weights are still tiered)")
    cache = tiered_cache(model, policy, disk_dir, capacity=ids.shape[1] + n_new)
    name = _cache_kwarg(model)
    try:
        tokens = ids
        logits_out: list[torch.Tensor] = []
        start = time.perf_counter()
        out = model(input_ids=ids, use_cache=True, **{name: cache})
        prefill_seconds = 0.0
        for step in range(n_new):
            logits = out.logits[:, -1]
            if return_logits:
                logits_out.append(logits.clone())
            next_ids = logits.argmax(dim=-1, keepdim=True)
            tokens = torch.cat([tokens, next_ids], dim=1)
            if step == 0:
                prefill_seconds = time.perf_counter() - start
            if step + 1 < n_new:
                out = model(input_ids=next_ids, use_cache=True, **{name: cache})
        decode_seconds = time.perf_counter() - start - prefill_seconds
        return GenerationResult(tokens, logits_out if return_logits else None, n_new, prefill_seconds,
                                decode_seconds, policy.to_dict(), cache.bytes_by_tier(), list(cache.layer_tiers), [])
    finally:
        cache.close()
