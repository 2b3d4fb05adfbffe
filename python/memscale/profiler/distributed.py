"""The torch.distributed setting of the model the profiler is given (docs/distributed.md).

Facts only, read from the engines themselves:

* ``DistributedDataParallel``: the wrapped module is profiled (its step is the local one);
  the graph records DDP, the world size, ``bucket_cap_mb`` and ``gradient_as_bucket_view``
  (the engine charges the gradient buckets).
* FSDP2 (``fully_shard``): the step is profiled on the unsharded module -- the FSDP forward
  hooks are held back for the run, so no collective runs on fake tensors -- and the graph's
  parameter, gradient and optimizer-state bytes are then replaced by this rank's shards (the
  DTensors' local tensors). Per layer it records what FSDP2 holds around the compute
  (``sharding``): the unsharded parameters of the layer's group (in the mixed-precision
  ``param_dtype``), whether the group stays gathered through the step (the root, or
  ``reshard_after_forward=False``), the group its backward prefetches and the full-size
  gradients (``reduce_dtype``) its reduce-scatter copies.

Supported layout (checked by :func:`read_setting`): ``fully_shard`` on blocks and then on the
root, each call on one module; the profiler is given the root.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import MemScaleError
from .storage import local_tensor

log = logging.getLogger("memscale")


def _fsdp() -> Any:
    """torch's FSDP2 module, or None where torch.distributed is not built."""
    if not torch.distributed.is_available():
        return None
    from torch.distributed.fsdp import _fully_shard as fsdp  # the package of fully_shard

    return fsdp


def _ddp_class() -> Any:
    if not torch.distributed.is_available():
        return None
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel


def _local_world_size(world: int) -> int:
    """Ranks on this host: torchrun's LOCAL_WORLD_SIZE, else the hostnames all-gathered."""
    if "LOCAL_WORLD_SIZE" in os.environ:
        return int(os.environ["LOCAL_WORLD_SIZE"])
    names: list[Any] = [None] * world
    torch.distributed.all_gather_object(names, socket.gethostname())
    return names.count(socket.gethostname())


@dataclass
class Setting:
    """What the profiler read: ``engine`` none|ddp|fsdp2, the module to profile and the facts."""

    engine: str = "none"
    module: nn.Module | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    groups: list[Any] = field(default_factory=list)  # FSDP2 parameter groups
    states: list[Any] = field(default_factory=list)  # FSDP2 states (one per fully_shard call)

    @property
    def active(self) -> bool:
        return self.engine != "none"


def local_module(model: nn.Module) -> nn.Module:
    """The module whose layers a plan names: the one DDP wraps, else ``model`` itself."""
    ddp = _ddp_class()
    return model.module if ddp is not None and isinstance(model, ddp) else model


def is_distributed(model: nn.Module) -> bool:
    """The model runs under DDP or holds FSDP2-sharded modules."""
    ddp, fsdp = _ddp_class(), _fsdp()
    if ddp is not None and isinstance(model, ddp):
        return True
    return fsdp is not None and any(isinstance(m, fsdp.FSDPModule) for m in model.modules())


def read_setting(model: nn.Module) -> Setting:
    """The distributed setting of ``model``; refuses layouts the profiler cannot read."""
    ddp, fsdp = _ddp_class(), _fsdp()
    if ddp is not None and isinstance(model, ddp):
        world = model.process_group.size()
        return Setting("ddp", model.module, {
            "engine": "ddp", "world_size": world, "local_world_size": _local_world_size(world),
            "gradient_as_bucket_view": bool(model.gradient_as_bucket_view),
            "bucket_cap_bytes": int(model.bucket_bytes_cap)})
    if fsdp is None:
        return Setting(module=model)
    sharded = [m for m in model.modules() if isinstance(m, fsdp.FSDPModule)]
    if not sharded:
        return Setting(module=model)
    if not isinstance(model, fsdp.FSDPModule):
        raise MemScaleError(
            f"{type(model).__name__}: {len(sharded)} submodule(s) are sharded with fully_shard but the module given "
            "is not; call fully_shard on the root after its blocks (fully_shard(block) for each block, then "
            "fully_shard(model)) and give the root to memscale")
    if any(isinstance(m, ddp) for m in model.modules()):
        raise MemScaleError("FSDP2 and DDP in one model: not supported; use one of them")
    states, groups = [], []
    for m in sharded:
        state = m._get_fsdp_state()
        if state in states:
            continue
        if len(state._modules) != 1:
            raise MemScaleError("fully_shard over a list of modules: not supported by memscale; call fully_shard "
                                "on each module (block) and then on the root")
        states.append(state)
        groups.extend(state._fsdp_param_groups)
    world = int(torch.distributed.get_world_size())
    return Setting("fsdp2", model, {"engine": "fsdp2", "world_size": world,
                                    "local_world_size": _local_world_size(world),
                                    "gradient_as_bucket_view": False, "bucket_cap_bytes": 0}, groups, states)


@contextlib.contextmanager
def fsdp_hooks_held(setting: Setting) -> Iterator[None]:
    """Hold back FSDP2's forward hooks while the profiler runs the step on fake tensors
    (they all-gather and register reduce-scatters); restored, in their order, afterwards."""
    saved = []
    try:
        for state in setting.states:
            for handle in (state._pre_forward_hook_handle, state._post_forward_hook_handle):
                hooks = handle.hooks_dict_ref()
                if hooks is not None and handle.id in hooks:
                    saved.append((hooks, dict(hooks)))
                    del hooks[handle.id]
        yield
    finally:
        for hooks, items in reversed(saved):
            hooks.clear()
            hooks.update(items)


def _unsharded_bytes(fsdp_param: Any, world: int, dtype: torch.dtype | None) -> int:
    """Bytes of a parameter all-gathered: its padded shard times the ranks, in ``dtype``."""
    numel = fsdp_param.padded_sharded_param_size.numel() * world
    return numel * dtype.itemsize


def _param_dtype(fp: Any, group: Any) -> torch.dtype:
    """The dtype a parameter is gathered in: the mixed-precision param_dtype (FSDP2 reads the
    policy at its lazy init, so before the first step it is read from the group's policy)."""
    return getattr(fp, "param_dtype", None) or group.mp_policy.param_dtype or fp.sharded_param.dtype


def _reduce_dtype(fp: Any, group: Any) -> torch.dtype:
    return getattr(fp, "reduce_dtype", None) or group.mp_policy.reduce_dtype or _param_dtype(fp, group)


def _local_bytes(p: torch.Tensor) -> int:
    local = local_tensor(p)
    return local.numel() * local.element_size()


def per_rank_graph(graph: dict[str, Any], setting: Setting, model: nn.Module, training: bool) -> dict[str, Any]:
    """``graph`` (profiled at full size) with one rank's figures and the distributed facts."""
    if not setting.active:
        return graph
    graph["distributed"] = dict(setting.facts)
    if setting.engine != "fsdp2":
        return graph
    world = setting.facts["world_size"]
    group_of: dict[int, Any] = {}
    param_of: dict[int, Any] = {}
    for g in setting.groups:
        for fp in g.fsdp_params:
            group_of[id(fp.sharded_param)] = g
            param_of[id(fp.sharded_param)] = fp
    root_state = setting.states[0] if setting.states and setting.states[0]._modules[0] is model else None

    def kept(g: Any) -> bool:  # gathered through forward and backward
        root = root_state is not None and g in root_state._fsdp_param_groups
        return g.post_forward_mesh_info is None or (root and bool(root_state._auto_reshard_after_forward))

    def gathered(g: Any) -> int:
        return sum(_unsharded_bytes(fp, world, _param_dtype(fp, g)) for fp in g.fsdp_params)

    def scattered(g: Any) -> int:
        return sum(_unsharded_bytes(fp, world, _reduce_dtype(fp, g))
                   for fp in g.fsdp_params if fp.sharded_param.requires_grad) if training else 0

    seen: set[int] = set()
    layer_groups: list[Any] = []
    for layer in graph["layers"]:
        module = model.get_submodule(layer["name"]) if layer["name"] else model
        owned = [p for p in module.parameters() if id(p) not in seen]
        seen.update(id(p) for p in owned)
        full = sum(p.numel() * p.element_size() for p in owned)
        local = sum(_local_bytes(p) for p in owned)
        ratio = local / full if full else 1.0
        groups = {id(group_of[id(p)]): group_of[id(p)] for p in owned if id(p) in group_of}
        g = max(groups.values(), key=gathered, default=None)
        layer["param_bytes"] = layer["param_bytes"] - full + local
        layer["optimizer_bytes"] = int(round(layer["optimizer_bytes"] * ratio))
        # A group gathered through the step (the root) keeps its full-size gradients until its
        # reduce-scatter at the end of backward; the others scatter right after their backward.
        if g is None or not kept(g):
            layer["grad_bytes"] = int(round(layer["grad_bytes"] * ratio))
        layer_groups.append(g)
        sharding = {"gathered_bytes": 0, "kept_gathered_bytes": 0, "prefetch_bytes": 0, "reduce_scatter_bytes": 0}
        sharding["kept_gathered_bytes"] = sum(
            _unsharded_bytes(param_of[id(p)], world, _param_dtype(param_of[id(p)], group_of[id(p)]))
            for p in owned if id(p) in group_of and kept(group_of[id(p)]))
        if g is not None and not kept(g):
            sharding["gathered_bytes"] = gathered(g)
        if g is not None:
            sharding["reduce_scatter_bytes"] = scattered(g)
        layer["sharding"] = sharding
    # Backward prefetch: FSDP2 all-gathers the group that ran before this one in forward
    # (its default), or the modules set_modules_to_backward_prefetch named.
    order = [g for i, g in enumerate(layer_groups) if g is not None and g not in layer_groups[:i]]
    state_of = {id(g): s for s in setting.states for g in s._fsdp_param_groups}
    for layer, g in zip(graph["layers"], layer_groups):
        if g is None or kept(g):
            continue
        explicit = state_of[id(g)]._states_to_backward_prefetch
        if explicit:
            ahead = [t for s in explicit for t in s._fsdp_param_groups]
        else:
            i = order.index(g)
            ahead = [order[i - 1]] if i > 0 else []
        layer["sharding"]["prefetch_bytes"] = sum(gathered(t) for t in ahead if not kept(t))
        for s in state_of[id(g)]._states_to_forward_prefetch:  # gathered ahead in forward too
            layer["sharding"]["gathered_bytes"] += sum(gathered(t) for t in s._fsdp_param_groups if not kept(t))
    trainable = [p for p in model.parameters() if p.requires_grad] if training else []
    graph["trainable_param_bytes"] = [_local_bytes(p) for p in trainable]
    graph["largest_param_bytes"] = max((_local_bytes(p) for p in trainable), default=0)
    log.info("profiled one FSDP2 rank of %d: %d parameter bytes on this rank", world,
             sum(layer["param_bytes"] for layer in graph["layers"]))
    return graph
