"""Apply a Plan's per-layer techniques to a model, reversibly.

``apply_plan(model, plan)`` reads each plan layer's ``name`` (module path),
``techniques``, ``tile_chunks`` and ``activation_tier``, validates *everything* first
(unknown layer names, techniques a module cannot take, an unusable offload
directory) and raises :class:`ExecutorError` before changing anything. Then it
installs one composed forward per affected module:

    offload hooks  →  checkpoint  →  (root only) labels detection  →  tile / deferred head  →  original

* offload outermost, so a layer that is both checkpointed and offloaded sends its
  checkpoint boundary (the inputs checkpoint keeps) to the tier;
* labels detection inside checkpoint, so a recompute of a checkpointed root runs the
  head in the same deferred mode as the original forward.

``handle.remove()`` restores every module exactly: same parameter objects (never
touched), the same forward (the instance attribute is deleted, or the previous one
put back), no hooks and no attributes left; the offload files and threads are gone.
``state_dict()`` is never changed.

Techniques and what they accept:

* ``checkpoint``: any module that does not overwrite its input (``inplace=True``).
* ``offload_activations``: ``activation_tier`` ``disk`` (any device) or ``host``
  (CUDA tensors only; on a CPU model host memory is where activations already are).
* ``tile``: plan kind ``mlp`` with position-wise leaves (see ``tiling``), or plan kind
  ``lm_head`` whose logits come from an ``nn.Linear``, in a model whose forward takes ``labels``
  (see ``head_loss``).
* ``offload_weights``: only with ``page_weights=True`` (``wrap`` with an offloaded optimizer,
  which updates the home copies: :mod:`.weight_paging`), from ``weight_tier`` ``disk`` or
  ``host``; refused otherwise (a resident optimizer's step would write into an evicted
  layer).

Example:
    >>> import torch
    >>> from memscale.runtime.training import apply_plan
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> handle = apply_plan(model, {"layers": [
    ...     {"name": "0", "kind": "mlp", "techniques": ["checkpoint"], "tile_chunks": 1,
    ...      "activation_tier": "device"}]})
    >>> model(torch.randn(3, 8)).sum().backward()
    >>> handle.remove()
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Callable

import torch

from memscale.runtime.training import head_loss, tiling
from memscale.runtime.training.checkpoint import check_checkpointable, checkpointed
from memscale.errors import ExecutorError
from memscale.runtime import hooks
from memscale.runtime.hooks import ForwardPatch, is_patched
from memscale.runtime.training.offload_activations import DEFAULT_MIN_OFFLOAD_BYTES, ActivationStore
from memscale.runtime.offload_dir import check_offload_dir
from memscale.profiler.storage import local_tensor
from memscale.runtime.training.plan_view import LayerSpec, plan_is_skipped, plan_skip_reason, read_plan
from memscale.runtime.training.weight_paging import TrainingPager

log = logging.getLogger("memscale")

Wrapper = Callable[[Callable[..., Any]], Callable[..., Any]]

#: Disk-tier directory when neither the caller nor the environment names one.
DEFAULT_OFFLOAD_DIR = Path(tempfile.gettempdir()) / "memscale-offload"

def active_handle(model: torch.nn.Module) -> "PlanHandle | None":
    """The handle of the plan :func:`apply_plan` applied to ``model``, if any."""
    return hooks.handle_of(model, PlanHandle)


@dataclass
class PlanHandle:
    """What ``apply_plan`` did; ``remove()`` undoes all of it."""

    model: torch.nn.Module
    plan: Any
    layers: list[LayerSpec]
    patches: list[ForwardPatch] = field(default_factory=list)
    store: ActivationStore | None = None
    offload_dir: Path | None = None
    pager: TrainingPager | None = None
    removed: bool = False

    def remove(self) -> None:
        """Restore every patched module and delete offload files; idempotent."""
        if self.removed:
            return
        for patch in reversed(self.patches):
            patch.remove()
        if self.store is not None:
            self.store.close()
        if self.pager is not None:
            self.pager.remove()
        self.removed = True
        hooks.unregister(self.model, self)
        log.info("memscale: plan removed from %s", type(self.model).__name__)

    def __enter__(self) -> "PlanHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


@dataclass
class _Work:
    """Validated instructions for one module."""

    spec: LayerSpec
    module: torch.nn.Module
    head_signature: Any = None
    logits_linear: torch.nn.Linear | None = None
    logits_path: str = ""


def _module_device(module: torch.nn.Module, model: torch.nn.Module) -> torch.device:
    for t in chain(module.parameters(), module.buffers(), model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


def _resolve(model: torch.nn.Module, spec: LayerSpec) -> torch.nn.Module:
    try:
        return model.get_submodule(spec.name)
    except AttributeError:
        names = [n for n, _ in model.named_modules()]
        close = [n for n in names if n and (spec.name.split(".")[-1] in n.split("."))][:3]
        hint = f"; similar: {close}" if close else ""
        raise ExecutorError(f"plan layer {spec.name!r}: {type(model).__name__} has no submodule "
                            f"with that path{hint}; plan and model must come from the same "
                            "model") from None


def _validate(model: torch.nn.Module, specs: list[LayerSpec], page_weights: bool = False) -> list[_Work]:
    work: list[_Work] = []
    seen: dict[int, str] = {}
    for spec in specs:
        if not spec.techniques:
            continue
        module = _resolve(model, spec)
        if id(module) in seen:
            raise ExecutorError(f"plan layer {spec.name!r} is the same module as layer "
                                f"{seen[id(module)]!r}; each module may be planned once")
        seen[id(module)] = spec.name
        if is_patched(module):
            raise ExecutorError(f"plan layer {spec.name!r}: a MemScale plan is already applied "
                                "to it; remove that first (handle.remove() or memscale.unwrap)")
        item = _Work(spec, module)
        if "checkpoint" in spec.techniques:
            check_checkpointable(module, spec.name)
        if "offload_weights" in spec.techniques:
            if not page_weights:
                raise ExecutorError(f"plan layer {spec.name!r}: technique 'offload_weights' is applied "
                                    "in training only with the optimizer offloaded (memscale.wrap(..., "
                                    "optimizer=opt, offload_optimizer=True)); plan with offload_weights off")
            if spec.weight_tier not in ("host", "disk"):
                raise ExecutorError(f"plan layer {spec.name!r}: offload_weights with weight_tier "
                                    f"{spec.weight_tier!r}; expected 'host' or 'disk'")
        if "offload_activations" in spec.techniques:
            if spec.activation_tier not in ("host", "disk"):
                raise ExecutorError(f"plan layer {spec.name!r}: offload_activations with "
                                    f"activation_tier {spec.activation_tier!r}; expected 'host' "
                                    "or 'disk'")
            device = _module_device(module, model)
            if spec.activation_tier == "host" and device.type != "cuda":
                raise ExecutorError(f"plan layer {spec.name!r}: activation_tier 'host' but its "
                                    f"tensors are on {device.type}, which already is host "
                                    "memory; use activation_tier 'disk' on a CPU-only machine")
        if "tile" in spec.techniques:
            if spec.kind == "lm_head":
                item.head_signature, sub, item.logits_linear = head_loss.check_head(
                    model, module, spec.name)
                item.logits_path = f"{spec.name}.{sub}" if sub and spec.name else (sub or spec.name)
                if item.logits_linear is not module and is_patched(item.logits_linear):
                    raise ExecutorError(f"plan layer {spec.name!r}: its Linear "
                                        f"{item.logits_path!r} is already patched by MemScale")
            elif spec.kind == "mlp":
                tiling.check_tileable(module, spec.name)
            else:
                raise ExecutorError(f"plan layer {spec.name!r}: 'tile' on kind {spec.kind!r}; "
                                    "tiling applies to position-wise layers of kind 'mlp' and "
                                    "to the output head (kind 'lm_head')")
        work.append(item)
    heads = [w for w in work if w.head_signature is not None]
    if len(heads) > 1:
        raise ExecutorError(f"plan tiles {len(heads)} output heads "
                            f"{[w.spec.name for w in heads]}; head+loss tiling takes one")
    if heads and is_patched(model) and all(w.module is not model for w in work):
        raise ExecutorError("the model's forward is already patched by MemScale; remove that "
                            "plan first")
    _warn_nesting(work)
    return work


def _warn_nesting(work: list[_Work]) -> None:
    recomputed = [w for w in work if {"checkpoint", "tile"} & w.spec.techniques]
    for w in work:
        if "offload_activations" not in w.spec.techniques:
            continue
        for outer in recomputed:
            if outer is not w and _is_descendant(w.module, outer.module):
                log.warning("memscale: layer %r offloads activations inside %r, which is "
                            "recomputed; its tensors go to the %s tier instead of being "
                            "recomputed", w.spec.name, outer.spec.name, w.spec.activation_tier)


def _is_descendant(module: torch.nn.Module, ancestor: torch.nn.Module) -> bool:
    return any(m is module for m in ancestor.modules()) and module is not ancestor


def _wrappers(item: _Work, model: torch.nn.Module, store: ActivationStore | None) -> list[Wrapper]:
    """The wrappers of one module, innermost first."""
    spec, module = item.spec, item.module
    out: list[Wrapper] = []
    if "tile" in spec.techniques and item.head_signature is None:
        out.append(lambda fwd: tiling.tiled(fwd, spec.tile_chunks, spec.name))
    if "checkpoint" in spec.techniques:
        out.append(lambda fwd: checkpointed(fwd, module, spec.name))
    if "offload_activations" in spec.techniques:
        assert store is not None
        tier = spec.activation_tier
        out.append(lambda fwd: _offloaded(fwd, store, spec.name, tier))
    return out


def _offloaded(forward: Callable[..., Any], store: ActivationStore, name: str,
               tier: str) -> Callable[..., Any]:
    # torch.compile cannot trace saved-tensor hooks correctly (the compiled backward
    # sees wrong strides), so an offloaded layer always runs eagerly: dynamo breaks the
    # graph around it and compiles the rest of the model.
    @torch.compiler.disable
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        with store.layer(name, tier):
            return forward(*args, **kwargs)
    return run


def _compose(wrappers: list[Wrapper]) -> Wrapper:
    def make(fwd: Callable[..., Any]) -> Callable[..., Any]:
        for wrap in wrappers:
            fwd = wrap(fwd)
        return fwd
    return make


def apply_plan(model: torch.nn.Module, plan: Any, *,
               offload_dir: str | os.PathLike[str] | None = None,
               min_offload_bytes: int = DEFAULT_MIN_OFFLOAD_BYTES,
               required_disk_bytes: int | None = None) -> PlanHandle:
    """Apply ``plan`` to ``model``; return a handle whose ``remove()`` restores it exactly.

    Args:
        model: the module the plan was made for (layer names are its module paths).
        plan: a ``memscale.Plan``, a dict in the docs/json-schema.md shape, or its JSON text.
        offload_dir: disk tier directory; default ``$MEMSCALE_OFFLOAD_DIR`` or
            ``DEFAULT_OFFLOAD_DIR``. Checked (creatable, writable, free space) before
            anything is modified.
        min_offload_bytes: saved tensors smaller than this stay in memory (default 0: the plan counts them moved).
        required_disk_bytes: free space the disk tier needs; default the sum of
            ``bytes_before - bytes_after`` of the disk-tier offloaded layers.
    """
    if not isinstance(model, torch.nn.Module):
        raise ExecutorError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if hooks.handle_of(model) is not None:
        raise ExecutorError(f"model: a MemScale plan is already applied to this "
                            f"{type(model).__name__}; remove it first")
    handle = install_plan(model, plan, offload_dir=offload_dir, min_offload_bytes=min_offload_bytes,
                          required_disk_bytes=required_disk_bytes)
    hooks.register(model, handle)
    return handle


def install_plan(model: torch.nn.Module, plan: Any, *, offload_dir: str | os.PathLike | None = None,
                 min_offload_bytes: int = DEFAULT_MIN_OFFLOAD_BYTES,
                 required_disk_bytes: int | None = None, page_weights: bool = False) -> PlanHandle:
    """:func:`apply_plan` without recording the handle in the registry (``wrap`` records
    its own handle, which owns this one). ``page_weights``: the caller steps an offloaded
    optimizer wired to ``handle.pager``, so ``offload_weights`` layers are paged."""
    if isinstance(min_offload_bytes, bool) or not isinstance(min_offload_bytes, int) \
            or min_offload_bytes < 0:
        raise ExecutorError(f"min_offload_bytes: {min_offload_bytes!r}; expected an int >= 0")
    specs = read_plan(plan)
    if plan_is_skipped(plan):
        # The engine decided nothing is needed (tiny model, mode off): change nothing.
        log.info("memscale: plan for %s is skipped (%s); the model is left as it is",
                 type(model).__name__, plan_skip_reason(plan) or "no reason given")
        return PlanHandle(model=model, plan=plan, layers=specs)
    work = _validate(model, specs, page_weights)
    disk = [w.spec for w in work if "offload_activations" in w.spec.techniques
            and w.spec.activation_tier == "disk"]
    directory: Path | None = None
    if disk:
        needed = required_disk_bytes if required_disk_bytes is not None \
            else sum(s.offloaded_bytes for s in disk)
        where = offload_dir or os.environ.get("MEMSCALE_OFFLOAD_DIR") or DEFAULT_OFFLOAD_DIR
        directory = check_offload_dir(where, needed)

    handle = PlanHandle(model=model, plan=plan, layers=specs, offload_dir=directory)
    if any("offload_activations" in w.spec.techniques for w in work):
        def protected() -> set[int]:
            # FSDP2: the shards, and the unsharded parameters of the modules gathered now
            return {local_tensor(t).untyped_storage().data_ptr() for t in chain(model.parameters(), model.buffers())}
        handle.store = ActivationStore(directory, min_offload_bytes, protected)
    try:
        per_module: dict[int, tuple[torch.nn.Module, str, list[Wrapper]]] = {}
        head = next((w for w in work if w.head_signature is not None), None)
        for item in work:
            per_module[id(item.module)] = (item.module, item.spec.name,
                                           _wrappers(item, model, handle.store))
        if head is not None:
            linear = head.logits_linear
            assert linear is not None
            entry = per_module.setdefault(id(linear), (linear, head.logits_path, []))
            entry[2].insert(0, lambda fwd: head_loss.deferred_head(
                fwd, linear, head.spec.tile_chunks, head.logits_path))
            # Labels detection sits just outside the model's own forward (inside its
            # checkpoint/offload wrappers, when the root itself is planned).
            entry = per_module.setdefault(id(model), (model, "", []))
            entry[2].insert(0, lambda fwd: head_loss.with_labels_detection(
                fwd, head.head_signature, type(model).__name__))
        for module, name, wrappers in per_module.values():
            handle.patches.append(ForwardPatch(module, _compose(wrappers), name=name))
        paged = {w.spec.name: w.spec.weight_tier for w in work if "offload_weights" in w.spec.techniques}
        if paged:
            offload = getattr(plan, "offload", None)
            handle.pager = TrainingPager(model, specs, paged, int(getattr(offload, "prefetch_n_ahead", 1)),
                                         int(getattr(offload, "ram_bytes", 0)), offload_dir or
                                         os.environ.get("MEMSCALE_OFFLOAD_DIR") or DEFAULT_OFFLOAD_DIR)
    except BaseException:
        handle.remove()
        raise
    _log_applied(model, work, directory)
    return handle


def _log_applied(model: torch.nn.Module, work: list[_Work], directory: Path | None) -> None:
    def names(tech: str) -> list[str]:
        return [w.spec.name or "<root>" for w in work if tech in w.spec.techniques]
    log.info("memscale: applied plan to %s: checkpoint %s, offload_activations %s%s, tile %s",
             type(model).__name__, names("checkpoint") or "-", names("offload_activations") or "-",
             f" (disk tier in {directory})" if directory else "", names("tile") or "-")
