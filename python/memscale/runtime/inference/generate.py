"""Greedy generation with a KV cache: weights paged by the wrapper, each layer's KV cache on
its planned tier.

One path for every model: any causal LM whose forward takes a transformers ``Cache``
(``past_key_values=`` or ``cache=``, with ``use_cache``) and returns an output with
``.logits`` runs its own forward with a
:class:`memscale.runtime.inference.hf_cache.TieredCache` that keeps each layer's K/V on its
tier. A wrapped model's tiers are the engine's plan (``LayerPlan.kv_tier``); ``tiers=``
overrides them by position. The activations between layers stay on the device: the
model's own forward holds them, so nothing here could free them by moving them.

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

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from ...errors import ConfigError
from ...profiler.introspect import model_dims
from .pager import handle_of
from .tiers import TENSOR_TYPES, TierPolicy, check_inference_tiers, tier_policy

log = logging.getLogger("memscale")


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

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens (batch x new) per second of prefill + decode."""
        total = self.prefill_seconds + self.decode_seconds
        return self.tokens.shape[0] * self.new_tokens / total if total > 0 else 0.0


def _resolve_tiers(model: nn.Module, tiers: TierPolicy | Mapping[str, Any] | None) -> TierPolicy:
    """``tiers`` over the wrapped model's policy (its Config.tiers / plan split), over all-on-device."""
    if isinstance(tiers, TierPolicy):
        return tiers
    handle = handle_of(model)
    base = handle.tiers if handle is not None else TierPolicy()
    merged: dict[str, Any] = {t: {"gpu": getattr(base, t).gpu, "cpu": getattr(base, t).cpu} for t in TENSOR_TYPES}
    merged.update(dict(tiers or {}))
    return tier_policy(overrides=merged)


def _kv_tiers(model: nn.Module, tiers: TierPolicy | Mapping[str, Any] | None, policy: TierPolicy) -> list[str]:
    """Each cache layer's tier: an explicit ``kv_cache`` override by position, else the
    wrapped model's plan, else all on the device."""
    from .hf_cache import planned_tiers, split_tiers

    explicit = isinstance(tiers, TierPolicy) or (tiers is not None and "kv_cache" in tiers)
    handle = handle_of(model)
    if not explicit and handle is not None and handle.plan is not None:
        return planned_tiers(model, handle.plan)
    return split_tiers(model, policy)


def _check_length(model: nn.Module, prompt: int, n_new: int) -> None:
    # a warning, as transformers gives: rotary models run past their configured positions,
    # and a model with a learned position table raises its own index error
    limit = model_dims(model).max_positions
    if limit and prompt + n_new > limit:
        log.warning("generate: prompt %d + %d new = %d tokens exceed the model's %d configured positions",
                    prompt, n_new, prompt + n_new, limit)


def generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int, *,
             tiers: TierPolicy | Mapping[str, Any] | None = None, disk_dir: str | None = None,
             return_logits: bool = False) -> GenerationResult:
    """Greedy decoding of ``max_new_tokens`` tokens after ``input_ids`` (batch, prompt).

    The KV cache of a wrapped model follows the engine's plan layer by layer; ``tiers``
    overrides it by position (``{"kv_cache": {"gpu": 50, "cpu": 0}}``: the first half of
    the layers' caches on the device, the rest on disk). ``tiers.activations`` must keep
    gpu at 100 (ConfigError otherwise). ``disk_dir`` holds the cache's files (default:
    the weights' directory, else a private temp dir). Works on wrapped and unwrapped
    models alike.
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens: got {max_new_tokens!r}, expected an integer >= 1")
    if input_ids.dim() != 2:
        raise ConfigError(f"input_ids: got shape {tuple(input_ids.shape)}, expected (batch, prompt)")
    try:
        from .hf_cache import cache_kwarg, tiered_cache
    except ImportError as err:  # transformers is not installed: no Cache class to fill
        raise ConfigError("generate: needs transformers (its Cache classes hold the KV cache)") from err
    name = cache_kwarg(model)
    if name is None:
        raise ConfigError(f"model: {type(model).__name__}.forward takes no KV cache; generate needs a causal LM whose "
                          "forward takes a transformers Cache (past_key_values= or cache=, with use_cache) and "
                          "returns an output with .logits")
    policy = _resolve_tiers(model, tiers)
    check_inference_tiers(policy)
    _check_length(model, input_ids.shape[1], max_new_tokens)
    handle = handle_of(model)
    if disk_dir is None and handle is not None and handle.storage is not None:
        disk_dir = handle.storage.dir
    layer_tiers = _kv_tiers(model, tiers, policy)
    with torch.no_grad():
        cache = tiered_cache(model, layer_tiers, disk_dir, capacity=input_ids.shape[1] + max_new_tokens)
        try:
            return _greedy(model, name, cache, input_ids, max_new_tokens, policy, return_logits)
        finally:
            cache.close()


def _greedy(model: nn.Module, name: str, cache: Any, ids: torch.Tensor, n_new: int, policy: TierPolicy,
            return_logits: bool) -> GenerationResult:
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
    return GenerationResult(tokens, logits_out if return_logits else None, n_new, prefill_seconds, decode_seconds,
                            policy.to_dict(), cache.bytes_by_tier(), list(cache.layer_tiers))
