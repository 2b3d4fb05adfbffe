"""A transformers ``Cache`` whose layers keep their keys and values on their planned tier.

:class:`TieredCache` is a ``DynamicCache`` (so ``generate``, masks and the attention code
of any Hugging Face causal LM use it unchanged, as does any model whose forward takes a
transformers ``Cache`` and calls ``cache.update(k, v, layer_idx)``) in which every
full-attention layer placed off the device is a :class:`TieredLayer`: its rows live in
host memory (pinned on CUDA) or in a raw 0600 file
(:class:`memscale.runtime.inference.kv_cache.TierRows`), and ``update`` hands attention
the whole ``(batch, heads, t, head_dim)`` keys and values on the device for that layer's
attention only. Device layers (and sliding-window layers) are Hugging Face's own.

The tier of each layer comes from the engine's inference plan (``LayerPlan.kv_tier`` of
the plan layers that hold a KV cache, in execution order: :func:`planned_tiers`), or for
an explicit override from a tier split applied by position (the core's
``split_layer_tiers``: :func:`split_tiers`).

A wrapped model gets one automatically: :func:`install` adds a forward pre-hook that
supplies a fresh tiered cache whenever a call with ``use_cache`` on brings no cache, or the
empty ``DynamicCache`` ``model.generate`` creates for it. Or pass one yourself:

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from memscale.runtime.inference.hf_cache import tiered_cache
    >>> model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    ...                                      num_attention_heads=4, vocab_size=1000)).eval()
    >>> ids = torch.tensor([[1, 2, 3]])
    >>> cache = tiered_cache(model, {"kv_cache": {"gpu": 0, "cpu": 0}})   # every layer on disk
    >>> out = model.generate(ids, max_new_tokens=2, do_sample=False, cache=cache)
    >>> cache.layer_tiers
    ['disk', 'disk']
    >>> cache.close()
"""
from __future__ import annotations

import inspect
import logging
import os
import weakref
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from transformers.cache_utils import DynamicCache, DynamicLayer

from ...errors import ConfigError, MemScaleError
from ...profiler.introspect import model_dims
from .kv_cache import ScratchDir, TierRows
from .plan_view import kv_layer_tiers
from .tiers import TierPolicy, layer_tiers, tier_policy

log = logging.getLogger("memscale")


class TieredLayer(DynamicLayer):
    """One layer's keys and values on the host or on disk (time-major rows).

    Implements the ``CacheLayerMixin`` interface: ``lazy_initialization``, ``update``,
    ``get_seq_length``, ``get_mask_sizes``, ``get_max_length``, ``reset``, ``crop``,
    ``reorder_cache``, ``batch_repeat_interleave``, ``batch_select_indices``, and
    ``offload`` / ``prefetch`` as no-ops (the tier is the offload).
    """

    is_compileable = False
    is_croppable = True
    is_sliding = False

    def __init__(self, tier: str, store: "_TierStore", index: int) -> None:
        self._rows: tuple[TierRows, TierRows] | None = None
        super().__init__()
        self.tier = tier
        self._store = store
        self._index = index

    # keys / values are read back from the tier (only code outside attention reads them)
    @property
    def keys(self) -> torch.Tensor | None:  # type: ignore[override]
        return self._read(0) if self._rows is not None else None

    @keys.setter
    def keys(self, value: torch.Tensor | None) -> None:
        if value is not None:
            raise AttributeError("TieredLayer.keys: written only through update()")

    @property
    def values(self) -> torch.Tensor | None:  # type: ignore[override]
        return self._read(1) if self._rows is not None else None

    @values.setter
    def values(self, value: torch.Tensor | None) -> None:
        if value is not None:
            raise AttributeError("TieredLayer.values: written only through update()")

    def _read(self, which: int) -> torch.Tensor:
        return self._rows[which].prefix().permute(1, 2, 0, 3).contiguous()

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self._rows = self._store.rows_for(self._index, self.tier, key_states, value_states)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        for rows, x in zip(self._rows, (key_states, value_states)):
            rows.append(x.permute(2, 0, 1, 3))
        return self._read(0), self._read(1)

    def get_seq_length(self) -> int:
        return self._rows[0].length if self._rows is not None else 0

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def offload(self) -> None:
        pass

    def prefetch(self) -> None:
        pass

    def _close_rows(self) -> None:
        if self._rows is not None:
            for r in self._rows:
                r.close()
        self._rows = None

    def reset(self) -> None:
        self._close_rows()
        self.is_initialized = False

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"crop: got {tokens_to_remove}; pass a negative number of tokens to remove")
        if tokens_to_remove == 0 or self._rows is None:
            return
        keep = max(0, self.get_seq_length() + tokens_to_remove)
        for r in self._rows:
            r.truncate(keep)

    def _rewrite(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self._close_rows()
        self.is_initialized = False
        self.update(keys, values)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.get_seq_length() > 0:
            k, v = self._read(0), self._read(1)
            self._rewrite(k.index_select(0, beam_idx.to(k.device)), v.index_select(0, beam_idx.to(v.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.get_seq_length() > 0:
            k, v = self._read(0), self._read(1)
            self._rewrite(k.repeat_interleave(repeats, dim=0), v.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() > 0:
            k, v = self._read(0), self._read(1)
            self._rewrite(k[indices, ...], v[indices, ...])


class _TierStore:
    """The host buffers and disk files of one cache's tiered layers (no reference to the
    cache itself, so a finalizer can close it when the cache goes)."""

    def __init__(self, tiers: list[str], disk_dir: str | None, capacity: int) -> None:
        self.tiers = tiers
        self.disk_dir = disk_dir
        self.capacity = capacity
        self.scratch: ScratchDir | None = None
        self.rows: list[TierRows] = []

    def rows_for(self, index: int, tier: str, keys: torch.Tensor, values: torch.Tensor) -> tuple[TierRows, TierRows]:
        b, h, n, d = keys.shape
        capacity = max(self.capacity, n)
        if tier == "disk" and self.scratch is None:
            row_bytes = b * h * d * keys.element_size()
            self.scratch = ScratchDir(self.disk_dir, 2 * self.tiers.count("disk") * row_bytes * capacity)
        tag = f"{os.getpid()}-{id(self)}-{index}-{len(self.rows)}"
        made = tuple(TierRows(tier, (x.shape[0], x.shape[1], x.shape[3]), x.dtype, x.device, capacity,
                              self.scratch if tier == "disk" else None, f"memscale-kv-{tag}-{kv}.bin")
                     for kv, x in (("k", keys), ("v", values)))
        self.rows.extend(made)
        return made  # type: ignore[return-value]

    def files(self) -> list[str]:
        return [f for r in self.rows if (f := r.file())]

    def close(self) -> None:
        for r in self.rows:
            r.close()
        self.rows = []
        if self.scratch is not None:
            self.scratch.close()
            self.scratch = None


def _is_transformers_config(config: Any) -> bool:
    """A transformers config: it declares its decoder's layer types (sliding windows...)."""
    return callable(getattr(config, "get_text_config", None))


def _fresh_layers(config: Any, n_layers: int) -> list:
    """Empty cache layers: those a transformers config declares, else ``n_layers`` full ones."""
    if _is_transformers_config(config):
        return DynamicCache(config=config).layers
    return [DynamicLayer() for _ in range(n_layers)]


def place_layers(cache: DynamicCache, config: Any, tiers: list[str], disk_dir: str | None = None,
                 capacity: int = 256) -> _TierStore:
    """Puts the layers of an empty ``cache`` on ``tiers`` in place (the object stays the
    caller's): each full-attention layer off the device becomes a :class:`TieredLayer`.
    Returns the store of their buffers and files, closed when ``cache`` is collected."""
    if cache.get_seq_length() != 0:
        raise ValueError("place_layers: the cache already holds tokens")
    if not cache.layers:  # a DynamicCache made without a config grows its layers lazily
        cache.layers = _fresh_layers(config, len(tiers))
        cache.layer_class_to_replicate = None
    if len(tiers) != len(cache.layers):
        raise ValueError(f"tiers: {len(tiers)} entries for {len(cache.layers)} layers")
    placed = [t if t != "device" and type(layer) is DynamicLayer else "device" for t, layer in zip(tiers, cache.layers)]
    store = _TierStore(placed, disk_dir, capacity)
    cache.layers = [TieredLayer(t, store, i) if t != "device" else layer
                    for i, (t, layer) in enumerate(zip(placed, cache.layers))]
    cache.layer_tiers = placed
    cache._memscale_store = store
    weakref.finalize(cache, store.close)
    return store


class TieredCache(DynamicCache):
    """A ``DynamicCache`` with each full-attention layer's K/V on its tier.

    Args:
        config: the model's config. A transformers config gives the layers and their
            types (as for ``DynamicCache(config=...)``); any other gives one full-attention
            layer per entry of ``tiers``.
        tiers: the tier of every layer ("device", "host", "disk"), e.g. from
            :func:`planned_tiers`; sliding-window layers always stay on the device.
        disk_dir: directory of the disk tier's files (default: a private temp dir).
        capacity: rows reserved up front per layer (the storage grows beyond it).

    ``close()`` deletes the files; it also runs when the cache is garbage collected.
    """

    def __init__(self, config: Any, tiers: Sequence[str], disk_dir: str | None = None, capacity: int = 256) -> None:
        super().__init__(config=config if _is_transformers_config(config) else None)
        place_layers(self, config, list(tiers), disk_dir, capacity)

    def files(self) -> list[str]:
        """Paths of the disk tier's files that exist now."""
        return self._memscale_store.files()

    def bytes_by_tier(self) -> dict[str, int]:
        """Bytes of K and V held per tier now."""
        return bytes_by_tier(self)

    def close(self) -> None:
        """Deletes the disk tier's files and frees the host buffers; idempotent."""
        close(self)


def bytes_by_tier(cache: DynamicCache) -> dict[str, int]:
    """Bytes of K and V a cache holds per tier now (device layers: Hugging Face's tensors)."""
    out = {"device": 0, "host": 0, "disk": 0}
    for layer in cache.layers:
        if isinstance(layer, TieredLayer):
            if layer._rows is not None:
                out[layer.tier] += sum(r.length * r.row_bytes for r in layer._rows)
        elif getattr(layer, "is_initialized", False) and layer.keys is not None:
            out["device"] += layer.keys.numel() * layer.keys.element_size() * 2
    return out


def close(cache: DynamicCache) -> None:
    """Deletes a placed cache's files and frees its host buffers; idempotent."""
    for layer in cache.layers:
        if isinstance(layer, TieredLayer):
            layer._rows = None
            layer.is_initialized = False
    store = getattr(cache, "_memscale_store", None)
    if store is not None:
        store.close()


def takes_cache(model: nn.Module) -> bool:
    """Whether ``model``'s forward takes a transformers ``Cache`` (:func:`cache_kwarg` names it)."""
    return cache_kwarg(model) is not None


def cache_kwarg(model: nn.Module) -> str | None:
    """The forward's name for the cache: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    try:
        params = inspect.signature(type(model).forward).parameters
    except (TypeError, ValueError):
        return None
    return next((n for n in ("cache", "past_key_values") if n in params), None)


def cache_layers(model: nn.Module) -> int:
    """Layers of the model's KV cache: those its transformers config declares, else the
    layer count its config names (``num_hidden_layers`` / ``n_layers`` and aliases)."""
    config = getattr(model, "config", None)
    if _is_transformers_config(config):
        return len(DynamicCache(config=config).layers)
    n = model_dims(model).layers
    if n <= 0:
        raise ConfigError(f"model: {type(model).__name__}.config names no layer count (num_hidden_layers, n_layers "
                          "or an alias); the KV cache needs one layer per attention layer")
    return n


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def resolve(model: nn.Module, tiers: TierPolicy | Mapping[str, Any] | None) -> TierPolicy:
    if isinstance(tiers, TierPolicy):
        return tiers
    return tier_policy(overrides=dict(tiers or {}))


def split_tiers(model: nn.Module, policy: TierPolicy) -> list[str]:
    """Each cache layer's tier under ``policy.kv_cache`` applied by position (the core's rule)."""
    return layer_tiers(cache_layers(model), policy.kv_cache, model_device(model).type == "cuda")


def planned_tiers(model: nn.Module, plan: Any) -> list[str]:
    """Each cache layer's tier as the engine's plan decided it: the ``kv_tier`` of the plan
    layers that hold a KV cache, in execution order, one per cache layer. A plan that
    counted no KV cache (no attention found in the model) leaves it all on the device; a
    plan with another number of KV layers than the model caches was made for another
    model: MemScaleError naming both."""
    tiers = kv_layer_tiers(plan)
    n = cache_layers(model)
    if not tiers:
        log.info("offloaded inference: the plan counts no KV cache for %s; its %d cache layers stay on the device",
                 type(model).__name__, n)
        return ["device"] * n
    if len(tiers) != n:
        names = [layer.name for layer in plan.layers if layer.kv_tier != "none"]
        raise MemScaleError(f"plan: {len(tiers)} layers hold a KV cache ({', '.join(names)}), but "
                            f"{type(model).__name__} caches {n} layers; the plan was made for another model (plan "
                            "it on memscale.profile(model, example_inputs, training=False))")
    return tiers


def tiered_cache(model: nn.Module, tiers: TierPolicy | Mapping[str, Any] | Sequence[str] | None = None,
                 disk_dir: str | None = None, capacity: int = 256) -> TieredCache:
    """A :class:`TieredCache` for ``model``, to pass as ``past_key_values=`` / ``cache=``.
    ``tiers``: each cache layer's tier (e.g. :func:`planned_tiers`), or a TierPolicy /
    ``{"kv_cache": {"gpu": %, "cpu": %}}`` applied by position (:func:`split_tiers`)."""
    if isinstance(tiers, (list, tuple)):
        per_layer = list(tiers)
    else:
        per_layer = split_tiers(model, resolve(model, tiers))  # type: ignore[arg-type]
    return TieredCache(getattr(model, "config", None), per_layer, disk_dir, capacity)


class CacheHook:
    """The forward pre-hook that gives a wrapped model's calls a tiered cache.

    A call with ``use_cache`` on (its argument, else ``config.use_cache``) that brings no
    cache gets a fresh :class:`TieredCache`; one that brings an empty plain
    ``DynamicCache`` (the one ``model.generate`` makes, or the caller's own) has its
    layers placed on the tiers in place (:func:`place_layers`), so the object the caller
    holds keeps the tokens. A cache already holding tokens, or of another class, is left
    alone. ``remove()`` takes the hook off and closes the caches it placed.
    """

    def __init__(self, model: nn.Module, tiers: Sequence[str], disk_dir: str | None) -> None:
        self.name = cache_kwarg(model)
        self.disk_dir = disk_dir
        self.caches: "weakref.WeakSet[DynamicCache]" = weakref.WeakSet()
        self.layer_tiers = list(tiers)
        self._handle = model.register_forward_pre_hook(self._pre, with_kwargs=True)

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if len(args) > 1:
            return None  # arguments past input_ids given positionally: not ours to rewrite
        names = [n for n in ("cache", "past_key_values") if kwargs.get(n) is not None]
        current = kwargs.get(names[0]) if names else None
        use_cache = kwargs.get("use_cache")
        if use_cache is None:
            use_cache = getattr(module.config, "use_cache", False)
        if not use_cache:
            return None
        if current is None:
            cache = tiered_cache(module, self.layer_tiers, self.disk_dir)
            self.caches.add(cache)
            kwargs[self.name] = cache
            return args, kwargs
        if type(current) is DynamicCache and current.get_seq_length() == 0 \
                and getattr(current, "_memscale_store", None) is None:
            place_layers(current, module.config, self.layer_tiers, self.disk_dir)
            self.caches.add(current)
        return None

    def remove(self) -> None:
        self._handle.remove()
        for cache in list(self.caches):
            close(cache)


def install(model: nn.Module, tiers: Sequence[str], disk_dir: str | None) -> CacheHook | None:
    """The cache hook on ``model`` when its forward takes a cache and ``tiers`` (one per
    cache layer, :func:`planned_tiers`) put some layer off the device; else None (its own
    cache is then already where the plan says)."""
    if not takes_cache(model) or all(t == "device" for t in tiers):
        return None
    return CacheHook(model, tiers, disk_dir)
