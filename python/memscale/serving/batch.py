"""One model's running requests packed into one sequence over a transformers ``DynamicCache``.

Why packed rather than padded: a padded batch holds every row at the longest row's width
(its KV cache, its attention), so short rows pay for long ones and admission counts that
waste. Here the rows' tokens lie side by side in one ``(1, heads, t, head_dim)`` tensor
per layer, each column tagged with the row it belongs to and its position; the step's
``attention_mask`` is a 4-D boolean mask (a query sees the columns of its own row at or
before its position), which transformers' causal LMs take as it is, and ``position_ids``
are each token's own position. The cache is exactly the sum of the rows' lengths (the
engine counts exactly that: ``include/memscale/core/rules/serving.hpp``).

One forward per step: every running row feeds its next token and every joining row its
whole prefill (the prompt; a dropped row its prompt and all it generated), and the
logits are kept at each row's last fed token only. A finished or preempted row's
columns are cut out at once. Only full-attention ``DynamicLayer`` caches are packed this
way; a model whose config declares other layer kinds (sliding windows) is refused with a
ConfigError.
"""
from __future__ import annotations

import inspect
from typing import Any, Iterator

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


class PackedBatch:
    """The running rows of one model. A row is any object with ``id``, ``length`` (tokens in
    its cache) and ``next_token`` (the token its next step feeds)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.cache_arg, self._keep = forward_kwargs(model)
        self.device = next(model.parameters()).device
        self.cache: DynamicCache | None = None
        self.rows: list[Any] = []                        # in the cache, in joining order
        self.joining: list[tuple[Any, torch.Tensor]] = []  # (row, the tokens its first step feeds)
        self.owner = torch.empty(0, dtype=torch.long, device=self.device)     # each column's row id
        self.position = torch.empty(0, dtype=torch.long, device=self.device)  # each column's position

    @property
    def width(self) -> int:
        return int(self.owner.numel())

    def kv_bytes(self) -> int:
        if self.cache is None:
            return 0
        return sum(t.numel() * t.element_size() for layer in self.cache.layers for t in (layer.keys, layer.values))

    def add(self, row: Any, tokens: torch.Tensor) -> None:
        """``row`` joins at the next step, which feeds it ``tokens`` (positions 0..n-1)."""
        self.joining.append((row, tokens))

    def join_cached(self, row: Any, kv: LayerKV) -> None:
        """Appends ``row`` with its own cache ``kv`` (per layer ``(1, heads, length, d)``);
        ``kv`` is emptied layer by layer, so only one layer is ever held twice."""
        if self.cache is None:
            self.cache = fresh_cache(self.model)
            for layer, (k, v) in zip(self.cache.layers, kv):
                layer.lazy_initialization(k, v)
                layer.keys, layer.values = k, v
        else:
            for i, layer in enumerate(self.cache.layers):
                k, v = kv[i]
                layer.keys = torch.cat([layer.keys, k], dim=2)
                layer.values = torch.cat([layer.values, v], dim=2)
                kv[i] = None  # type: ignore[call-overload]
                del k, v
        kv.clear()
        self._extend([row.id] * row.length, list(range(row.length)))
        self.rows.append(row)

    def _extend(self, owner: list[int], position: list[int]) -> None:
        self.owner = torch.cat([self.owner, torch.tensor(owner, dtype=torch.long, device=self.device)])
        self.position = torch.cat([self.position, torch.tensor(position, dtype=torch.long, device=self.device)])

    def row_kv(self, row: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The row's own columns of every layer, ``(1, heads, length, d)``, one layer at a time."""
        index = (self.owner == row.id).nonzero().squeeze(1)
        for layer in self.cache.layers:
            yield layer.keys.index_select(2, index), layer.values.index_select(2, index)

    def remove(self, rows: list[Any]) -> None:
        """Cuts ``rows``' columns out (one layer at a time)."""
        gone = {r.id for r in rows}
        if not any(r.id in gone for r in self.rows):
            return
        self.rows = [r for r in self.rows if r.id not in gone]
        if not self.rows:
            self.cache = None
            self.owner, self.position = self.owner[:0], self.position[:0]
            return
        keep = ~torch.isin(self.owner, torch.tensor(sorted(gone), dtype=torch.long, device=self.device))
        index = keep.nonzero().squeeze(1)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(2, index)
            layer.values = layer.values.index_select(2, index)
        self.owner, self.position = self.owner[index], self.position[index]

    def step(self) -> list[int]:
        """One forward: each running row's ``next_token``, each joining row's tokens; the joining
        rows become running rows (last). Returns the greedy token of every row, in ``rows`` order."""
        owner = [r.id for r in self.rows]
        position = [r.length for r in self.rows]
        ids = [torch.tensor([r.next_token for r in self.rows], dtype=torch.long)]
        for row, tokens in self.joining:
            owner += [row.id] * tokens.numel()
            position += range(tokens.numel())
            ids.append(tokens.to(torch.long))
        ends = torch.tensor([len(self.rows) + n for n in self._joining_ends()], dtype=torch.long)
        last = torch.cat([torch.arange(len(self.rows)), ends]).to(self.device)
        q_owner = torch.tensor(owner, dtype=torch.long, device=self.device)
        q_pos = torch.tensor(position, dtype=torch.long, device=self.device)
        all_owner, all_pos = torch.cat([self.owner, q_owner]), torch.cat([self.position, q_pos])
        mask = (q_owner[:, None] == all_owner[None, :]) & (all_pos[None, :] <= q_pos[:, None])
        if self.cache is None:
            self.cache = fresh_cache(self.model)
        kwargs: dict[str, Any] = {self.cache_arg: self.cache}
        if self._keep:
            kwargs["logits_to_keep"] = last
        logits = self.model(input_ids=torch.cat(ids).to(self.device)[None], attention_mask=mask[None, None],
                            position_ids=q_pos[None], use_cache=True, **kwargs).logits[0]
        tokens = (logits if self._keep else logits[last]).argmax(dim=-1).tolist()
        self.owner, self.position = all_owner, all_pos
        self.rows.extend(row for row, _ in self.joining)
        self.joining = []
        return tokens

    def _joining_ends(self) -> list[int]:
        """Each joining row's last fed token, counted from the first joining token."""
        ends, at = [], 0
        for _, tokens in self.joining:
            at += tokens.numel()
            ends.append(at - 1)
        return ends
