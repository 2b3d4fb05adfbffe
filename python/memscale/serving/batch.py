"""One model's running requests as one left-padded batch over a transformers ``DynamicCache``.

Why left padding: transformers' Cache API holds one ``(rows, heads, t, head_dim)`` tensor
per layer, and its causal LMs take a 2-D ``attention_mask`` and per-row ``position_ids``
(the path ``generate`` itself takes for padded batches). Rows of different lengths are
right-aligned in the cache: each decode step appends one column for every row, a row's
mask hides its padding, its ``position_ids`` are its own length. A request joins after
its prefill ran alone (so its first token is exactly the one it gets alone); a finished
or preempted row is cut out at once, and the columns no remaining row uses are trimmed,
so the padded width is always the longest running row (the engine counts exactly that:
``include/memscale/core/rules/serving.hpp``). Only full-attention ``DynamicLayer`` caches
are batched this way; a model whose config declares other layer kinds (sliding windows)
is refused with a ConfigError.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import DynamicCache, DynamicLayer

from ..errors import ConfigError

LayerKV = list[tuple[torch.Tensor, torch.Tensor]]


def forward_kwargs(model: nn.Module) -> tuple[str, bool]:
    """The forward's cache argument (``cache``, else ``past_key_values``) and whether it takes
    ``logits_to_keep``; a forward without ``attention_mask`` / ``position_ids`` is refused."""
    params = inspect.signature(type(model).forward).parameters
    missing = [p for p in ("attention_mask", "position_ids") if p not in params]
    name = next((n for n in ("cache", "past_key_values") if n in params), None)
    if name is None or missing:
        raise ConfigError(f"model: {type(model).__name__}.forward lacks {', '.join(missing) or 'a cache argument'}; "
                          "continuous batching needs a causal LM taking a transformers Cache, attention_mask and "
                          "position_ids (any Hugging Face causal LM)")
    return name, "logits_to_keep" in params


def fresh_cache(model: nn.Module) -> DynamicCache:
    cache = DynamicCache(config=model.config)
    kinds = {type(layer).__name__ for layer in cache.layers if type(layer) is not DynamicLayer}
    if kinds:
        raise ConfigError(f"model: its cache has {', '.join(sorted(kinds))} layers; continuous batching batches "
                          "full-attention DynamicLayer caches only")
    return cache


class PaddedBatch:
    """The running rows of one model. A row is any object with ``length`` (tokens in its
    cache) and ``next_token`` (the token its next step feeds)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.cache_arg, self._keep = forward_kwargs(model)
        self.device = next(model.parameters()).device
        self.cache: DynamicCache | None = None
        self.rows: list[Any] = []

    def _run(self, **kwargs: Any) -> torch.Tensor:
        if self._keep:
            kwargs["logits_to_keep"] = 1
        out = self.model(use_cache=True, **kwargs)
        return out.logits[:, -1]

    @property
    def width(self) -> int:
        return self.cache.get_seq_length() if self.cache is not None else 0

    def kv_bytes(self) -> int:
        if self.cache is None:
            return 0
        return sum(t.numel() * t.element_size() for layer in self.cache.layers for t in (layer.keys, layer.values))

    def prefill(self, tokens: list[torch.Tensor]) -> tuple[list[int], LayerKV]:
        """Runs the 1-D ``tokens`` (all of one length) as one batch of their own, no padding:
        each row's greedy next token and the per-layer ``(rows, heads, t, d)`` K/V."""
        cache = fresh_cache(self.model)
        logits = self._run(input_ids=torch.stack(tokens).to(self.device), **{self.cache_arg: cache})
        return logits.argmax(dim=-1).tolist(), [(layer.keys, layer.values) for layer in cache.layers]

    def join(self, rows: list[Any], kv: LayerKV) -> None:
        """Adds ``rows`` (all of one ``length``) with their caches ``kv`` as the last rows;
        ``kv`` is emptied layer by layer, so only one layer is ever held twice."""
        length = rows[0].length
        if self.cache is None:
            self.cache = fresh_cache(self.model)
            for layer, (k, v) in zip(self.cache.layers, kv):
                layer.lazy_initialization(k, v)
                layer.keys, layer.values = k, v
            kv.clear()
            self.rows = list(rows)
            return
        b, t, n = len(self.rows), self.width, len(rows)
        width = max(t, length)
        for i, layer in enumerate(self.cache.layers):
            joined = []
            for old, new in ((layer.keys, kv[i][0]), (layer.values, kv[i][1])):
                out = old.new_zeros(b + n, old.shape[1], width, old.shape[3])
                out[:b, :, width - t:] = old
                out[b:, :, width - length:] = new
                joined.append(out)
            layer.keys, layer.values = joined
            kv[i] = None  # type: ignore[call-overload]
        kv.clear()
        self.rows.extend(rows)

    def row_kv(self, row: Any) -> LayerKV:
        """The row's own tokens of every layer, ``(1, heads, length, d)`` views."""
        i, t = self.rows.index(row), self.width
        return [(layer.keys[i:i + 1, :, t - row.length:], layer.values[i:i + 1, :, t - row.length:])
                for layer in self.cache.layers]

    def remove(self, rows: list[Any]) -> None:
        """Cuts ``rows`` out and trims the columns no remaining row uses."""
        gone = {id(r) for r in rows}
        keep = [i for i, r in enumerate(self.rows) if id(r) not in gone]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.cache = None
            return
        t = self.width
        width = max(r.length for r in self.rows)
        index = torch.tensor(keep, device=self.device)
        for layer in self.cache.layers:
            layer.keys = layer.keys[:, :, t - width:].index_select(0, index)
            layer.values = layer.values[:, :, t - width:].index_select(0, index)

    def step(self) -> list[int]:
        """One decode step of every row: feeds each row's ``next_token``; returns the greedy tokens."""
        t = self.width
        mask = torch.zeros(len(self.rows), t + 1, dtype=torch.long, device=self.device)
        for i, r in enumerate(self.rows):
            mask[i, t - r.length:] = 1
        positions = torch.tensor([[r.length] for r in self.rows], device=self.device)
        ids = torch.tensor([[r.next_token] for r in self.rows], device=self.device)
        logits = self._run(input_ids=ids, attention_mask=mask, position_ids=positions, **{self.cache_arg: self.cache})
        return logits.argmax(dim=-1).tolist()
