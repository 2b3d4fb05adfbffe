"""Assemble the ModelGraph dict (docs/json-schema.md) from discovery, estimation and measurement."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from .. import _C
from . import introspect as ins
from .discovery import LayerSpec, layer_kinds
from .recorder import LayerRecord
from .storage import tensor_bytes

DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
               torch.float64: "float64", torch.int8: "int8"}


def graph_dtype(model: nn.Module) -> str:
    """The parameter dtype holding the most bytes (float32 for a model without parameters)."""
    by_dtype: dict[torch.dtype, int] = {}
    for p in model.parameters():
        by_dtype[p.dtype] = by_dtype.get(p.dtype, 0) + p.numel() * p.element_size()
    if not by_dtype:
        return "float32"
    dtype = max(sorted(by_dtype, key=str), key=lambda d: by_dtype[d])
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"model parameters have dtype {dtype}; supported: {sorted(DTYPE_NAMES.values())}")
    return DTYPE_NAMES[dtype]


def batch_seq(inputs: Any) -> tuple[int, int]:
    """Batch and sequence length from the first tensor of the example inputs."""
    t = next((x for x in tree_leaves(inputs) if isinstance(x, torch.Tensor)), None)
    if t is None or t.dim() == 0:
        return 0, 0
    if t.dim() >= 2 and (not t.is_floating_point() or t.dim() == 3):
        return int(t.shape[0]), int(t.shape[1])
    return int(t.shape[0]), 0


def execution_order(specs: list[LayerSpec], records: list[LayerRecord]) -> list[int]:
    """Spec indices by first execution; layers that never ran follow in definition order."""
    return sorted(range(len(specs)), key=lambda i: (records[i].order < 0, records[i].order, i))


def assign_kinds(specs: list[LayerSpec], order: list[int], records: list[LayerRecord]) -> dict[int, str]:
    """Kind per spec index (:func:`memscale.profiler.discovery.layer_kinds` in execution order)."""
    kinds = layer_kinds([specs[i] for i in order], [records[i].order >= 0 for i in order])
    return dict(zip(order, kinds))


def _owners(model: nn.Module, specs: list[LayerSpec], order: list[int],
            orphan_first_use: dict[int, int | None]) -> tuple[dict[int, list[torch.Tensor]], dict[int, list[torch.Tensor]]]:
    """Parameters and buffers per spec index: first executed owner; orphans go to their first user."""
    params: dict[int, list[torch.Tensor]] = {i: [] for i in order}
    buffers: dict[int, list[torch.Tensor]] = {i: [] for i in order}
    owned: set[int] = set()
    for i in order:
        for p in specs[i].module.parameters():
            if id(p) not in owned:
                owned.add(id(p))
                params[i].append(p)
        for b in specs[i].module.buffers():
            if id(b) not in owned:
                owned.add(id(b))
                buffers[i].append(b)
    first = order[0]
    for table, tensors in ((params, model.parameters()), (buffers, model.buffers())):
        for t in tensors:
            if id(t) in owned:
                continue
            owned.add(id(t))
            user = orphan_first_use.get(id(t))
            table[user if user is not None and user >= 0 else first].append(t)
    return params, buffers


def _grad_makers(specs: list[LayerSpec], records: list[LayerRecord], order: list[int],
                 params: dict[int, list[torch.Tensor]]) -> dict[int, int]:
    """id(parameter) -> the spec index whose backward makes its gradient: the last layer in
    execution order that ran holding it (backward runs in reverse, so a parameter shared by
    several layers, a head tied to the embedding, gets its gradient at the later one and
    keeps it through the earlier ones' backward); a parameter no layer that ran holds (an
    orphan, a layer that never ran) at its owner."""
    maker = {id(p): i for i in order for p in params[i]}
    for i in order:
        if records[i].order >= 0:
            for p in specs[i].module.parameters():
                maker[id(p)] = i
    return maker


def build_graph(model: nn.Module, inputs: Any, specs: list[LayerSpec], records: list[LayerRecord],
                orphan_first_use: dict[int, int | None], *, training: bool, optimizer: str,
                optimizer_impl: str = "default",
                mixed_precision: bool, measured: list[tuple[int, int, int]] | None = None,
                cannot: Callable[[nn.Module, str, str, list[str]], dict[str, str]] | None = None) -> dict[str, Any]:
    """The ModelGraph dict. ``measured``: (peak, saved, scratch) bytes per spec index, or None.
    ``cannot(module, name, kind, tileable)``: the techniques the runtime cannot apply to
    a layer -> why (its ``cannot`` field); None records nothing (everything capable)."""
    order = execution_order(specs, records)
    kinds = assign_kinds(specs, order, records)
    params, buffers = _owners(model, specs, order, orphan_first_use)
    maker = _grad_makers(specs, records, order, params)
    grads: dict[int, list[torch.Tensor]] = {i: [] for i in order}
    if training:
        for i in order:
            for p in params[i]:
                if p.requires_grad:
                    grads[maker[id(p)]].append(p)
    g_batch, g_seq = batch_seq(inputs)
    dtype = graph_dtype(model)
    dbytes = ins.dtype_bytes(next(d for d, n in DTYPE_NAMES.items() if n == dtype))
    config = getattr(model, "config", None)
    optimizer = optimizer if training else "none"
    layers = []
    for index, i in enumerate(order):
        spec, rec, kind = specs[i], records[i], kinds[i]
        trainable = [p for p in params[i] if p.requires_grad] if training else []
        trainable_bytes = tensor_bytes(trainable)
        batch, seq = ins.batch_seq_of(rec.input_geom, g_batch, g_seq)
        hidden = ins.hidden_of(spec.module, rec.input_geom)
        # an inner width only means something for layers holding an MLP
        inner = ins.intermediate_of(spec.module, hidden, config) if kind in ("block", "mlp") else 0
        dims = ins.Dims(hidden=hidden, intermediate=inner,
                        heads=ins.heads_of(spec.module, config), vocab=ins.vocab_of(spec.module, kind),
                        seq=seq, batch=batch)
        kv = 0 if training else 2 * batch * seq * ins.kv_width_per_token(spec.module, hidden) * dbytes
        # the optimizer-state rule lives in core (model_graph.hpp), shared with the engine
        optimizer_bytes = _C.optimizer_state_bytes(optimizer, trainable_bytes, sum(p.numel() for p in trainable),
                                                   bool(mixed_precision and training))
        peak, saved, scratch = measured[i] if measured is not None else (0, 0, 0)
        tileable = ins.tileable_axes(spec.module, kind, batch, seq)
        incapable = cannot(spec.module, spec.name, kind, tileable) if cannot is not None else {}
        layers.append({
            "activation_bytes": int(rec.saved_bytes),
            "buffer_bytes": tensor_bytes(buffers[i]),
            "cannot": dict(sorted(incapable.items())),
            "dims": dims.to_dict(),
            "flops": int(rec.flops),
            "grad_bytes": tensor_bytes(grads[i]),
            "index": index,
            "input_bytes": int(rec.input_bytes),
            "kind": kind,
            "kv_cache_bytes": int(kv),
            "measured_activation_bytes": int(saved),
            "measured_peak_bytes": int(peak),
            "name": spec.name,
            "optimizer_bytes": int(optimizer_bytes),
            "output_bytes": int(rec.output_bytes),
            "param_bytes": tensor_bytes(params[i]),
            "tileable": tileable,
            "retained_bytes": int(rec.retained_bytes),
            # a layer backward never reached (before every trainable parameter) has no incoming
            # gradient; inference has no backward (the field keeps its default there)
            "receives_grad": bool(rec.grad_seen or not training),
            # the retained bytes no op saved were part of the forward scratch; the engine
            # charges them as retained from the layer's forward on. A measured step also sees
            # what fake tensors cannot, scratch inside opaque kernels (a fused RNN backward's
            # workspace): the graph keeps the larger figure
            "transient_bytes": int(max(rec.fwd_scratch - rec.retained_unsaved, rec.bwd_scratch, scratch, 0)),
        })
    return {
        "batch": g_batch,
        "dtype": dtype,
        "input_bytes": tensor_bytes(inputs),
        # sizes the CPU optimizer's per-tensor workspace (memory-model.md)
        "largest_param_bytes": max((p.numel() * p.element_size() for p in model.parameters() if p.requires_grad),
                                   default=0) if training else 0,
        # in the order a torch optimizer over model.parameters() steps them: the CPU
        # per-tensor optimizer's workspace (memory-model.md)
        "trainable_param_bytes": [p.numel() * p.element_size() for p in model.parameters() if p.requires_grad]
        if training else [],
        "layers": layers,
        # caps the inference reservation's tokens per step (reservation.hpp)
        "max_positions": ins.model_dims(model).max_positions,
        "mixed_precision": bool(mixed_precision),
        "model_name": type(model).__name__,
        "optimizer": optimizer,
        "optimizer_impl": optimizer_impl if training else "default",
        "seq": g_seq,
        "training": bool(training),
    }
