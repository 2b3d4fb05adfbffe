"""Per-layer attribution of one forward/backward step, shared by estimation and measurement.

The recorder hooks the discovered layers and attributes what happens to *spans*:

* forward span of layer L: from L's entry until the next layer is entered (ops run between
  layers -- "glue" such as a loss after the head -- belong to the layer before them; ops
  before the first layer belong to the first layer);
* backward span of L: from the moment the gradient of L's output is ready (a tensor hook
  on each output) until another layer's span starts; the step's first backward span
  belongs to the layer the forward ended in.

The step's loss (:func:`step_loss`): the model's own scalar loss when its output holds
one (a 0-dim tensor, e.g. a Hugging Face output computed from ``labels``), else a
cross-entropy of its first output over the last axis -- the plain loop's loss outside the
model. Backward runs from that loss alone. The loss's forward is glue of the layer the
forward ended in; its backward makes that layer's output gradient, which the memory model
charges as the layer's output-sized incoming gradient: the first backward span's scratch
is counted above the live bytes at its start plus that gradient (docs/memory-model.md,
"The loss of the step"), so the head's logits gradient is counted once.

Saved tensors (``saved_tensors_hooks``) are attributed to the current forward span's layer,
deduplicated by storage and excluding parameters, buffers and the step's inputs.

Retained tensors (:mod:`.retained`): at the end of the forward, what is reachable from the
non-tensor state the layers were called with (a KV ``Cache`` object) and, with the loss
outside the model, from the output the loop holds through backward, stays referenced
outside autograd whatever a technique does with the saved tensors. Those storages are a
layer's ``retained_bytes`` (the layer whose forward span allocated them; the saver where the
allocation was not seen) and are taken out of its saved bytes, so ``activation_bytes`` is
only what checkpointing or offload can free.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_leaves

from .introspect import InputGeometry
from .retained import reachable_tensors, stateful
from .storage import storage_key, storage_nbytes, tensor_bytes


class MemoryView(Protocol):
    """Current bytes and the peak since ``start_span`` of whatever memory is being watched."""

    def current(self) -> int: ...

    def start_span(self) -> None: ...

    def span_peak(self) -> int: ...


@dataclass
class LayerRecord:
    """What one layer did during the step (maxima over its spans and calls)."""

    order: int = -1
    saved_bytes: int = 0
    fwd_scratch: int = 0
    bwd_scratch: int = 0
    peak_abs: int = 0
    flops: int = 0
    input_bytes: int = 0
    output_bytes: int = 0
    input_geom: InputGeometry | None = None
    outputs_seen: bool = False
    retained_bytes: int = 0  # referenced outside autograd until backward ends (module docstring)
    retained_unsaved: int = 0  # the part of it no op saved (it is in the forward scratch)
    grad_seen: bool = False  # backward reached one of its outputs


@dataclass
class _Span:
    layer: int | None
    backward: bool
    entry: int
    saved0: int = 0
    loss: bool = False  # the step's first backward span: the loss's backward runs in it


def output_loss(t: torch.Tensor) -> torch.Tensor:
    """The loss of an output that is not one: mean cross-entropy over its last axis (class 0
    as the target), what ``F.cross_entropy(out.flatten(0, -2), y.flatten())`` costs."""
    logits = t if t.dim() >= 2 else t.reshape(1, -1)
    logits = logits.flatten(0, -2)
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target)


def own_loss(out: Any) -> torch.Tensor | None:
    """The loss the model computed itself (its ``loss`` field, or a 0-dim tensor that
    requires grad ahead of every other output), else None."""
    own = out.get("loss") if isinstance(out, dict) else getattr(out, "loss", None)
    if isinstance(own, torch.Tensor) and own.dim() == 0 and own.requires_grad:
        return own
    outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.requires_grad]
    return outs[0] if outs and outs[0].dim() == 0 else None


def step_loss(out: Any) -> torch.Tensor:
    """The scalar the step runs backward from.

    The model's own loss when it returns one: its ``loss`` field (a Hugging Face
    ``ModelOutput`` or a dict), or a 0-dim tensor that requires grad ahead of every other
    (``(loss, logits, ...)``). Otherwise the loss is computed outside the model:
    :func:`output_loss` of its first tensor that requires grad, plus any 0-dim tensors
    after it (auxiliary losses such as ``(logits, aux_loss)``).
    """
    own = own_loss(out)
    if own is not None:
        return own
    outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.requires_grad]
    if not outs:
        raise ValueError("training=True but the model's output has no tensor that requires grad; "
                         "pass training=False or return a loss/logits that depend on parameters")
    if not outs[0].is_floating_point():
        return outs[0].sum()
    loss = output_loss(outs[0])
    for aux in (t for t in outs[1:] if t.dim() == 0):
        loss = loss + aux
    return loss


def autocast_scope(autocast: tuple[str, torch.dtype] | None) -> Any:
    """``torch.autocast(device_type, dtype)`` for ``(device_type, dtype)``, a no-op for None."""
    if autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(autocast[0], dtype=autocast[1])


def backward_scope(autocast: tuple[str, torch.dtype] | None) -> Any:
    """Backward runs outside autocast (as torch recommends); its ops follow forward's dtypes."""
    if autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(autocast[0], enabled=False)


def _first_tensor(obj: Any) -> torch.Tensor | None:
    return next((t for t in tree_leaves(obj) if isinstance(t, torch.Tensor)), None)


@dataclass
class StepRecorder:
    """Hooks ``modules`` (one per layer) and records a :class:`LayerRecord` per layer.

    Use as a context manager around exactly one forward (and optionally one backward
    between :meth:`begin_backward` and :meth:`end_backward`). Hooks are removed on exit.
    """

    modules: list[nn.Module]
    memory: MemoryView
    excluded_storages: set[int]
    training: bool
    # storage size function (the fake tracker substitutes probed real workspace sizes)
    nbytes: Callable[[torch.Tensor], int] = storage_nbytes
    # called once per layer when its forward ends and once when its gradient arrives (progress bars)
    on_progress: Callable[[], None] | None = None
    records: list[LayerRecord] = field(init=False)
    prelude_flops: int = 0
    _handles: list[Any] = field(default_factory=list)
    _stack: list[int] = field(default_factory=list)
    _seen_saved: set[int] = field(default_factory=set)
    _span: _Span | None = None
    _prelude_saved: int = 0
    _next_order: int = 0
    _watch: dict[int, int | None] = field(default_factory=dict)
    _saved_ctx: Any = None
    _roots: list[Any] = field(default_factory=list)  # stateful non-tensor arguments of layer calls
    _saver: dict[int, tuple[int | None, int]] = field(default_factory=dict)  # storage -> (layer, bytes) saved
    _created: dict[int, int | None] = field(default_factory=dict)  # storage -> layer whose forward allocated it
    _prelude_layer: int | None = None  # the layer that adopted the ops before the first layer

    def __post_init__(self) -> None:
        self.records = [LayerRecord() for _ in self.modules]

    def record_step(self, model: nn.Module, args: tuple, kwargs: dict,
                    autocast: tuple[str, torch.dtype] | None = None) -> None:
        """Run and record one forward (and, when training, the loss and backward) of ``model``;
        forward and loss under ``autocast`` (``(device_type, dtype)``, None: as the caller runs)."""
        with torch.set_grad_enabled(self.training), self:
            with autocast_scope(autocast):
                out = model(*args, **kwargs)
                loss = step_loss(out) if self.training else None
            if autocast is not None:
                # leaving the step's autocast frees its cast weights even inside a caller's
                # autocast (whose cache would otherwise keep them, and fake ones, alive)
                torch.clear_autocast_cache()
            if loss is not None:
                # a loss outside the model: the loop holds the output it computed the loss
                # from (``logits = model(x); loss = ...``) until backward returns
                self._retain(self._roots + ([out] if own_loss(out) is None else []))
            self._roots = []
            del out  # the profiled step keeps its loss only: what is retained is charged apart
            self.end_forward()
            if loss is not None:
                self.begin_backward()
                with backward_scope(autocast):
                    loss.backward()
                del loss
                self.end_backward()

    # ---- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> "StepRecorder":
        for i, m in enumerate(self.modules):
            self._handles.append(m.register_forward_pre_hook(self._make_pre(i), with_kwargs=True))
            self._handles.append(m.register_forward_hook(self._make_post(i), with_kwargs=True))
        self._span = _Span(None, False, self.memory.current())
        self.memory.start_span()
        if self.training:
            self._saved_ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)
            self._saved_ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._saved_ctx is not None:
            self._saved_ctx.__exit__(*exc)
            self._saved_ctx = None
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._span is not None and exc[0] is None:
            self._close()
        self._span = None

    def end_forward(self) -> None:
        """Close the forward; saved-tensor attribution stops here."""
        if self._saved_ctx is not None:
            self._saved_ctx.__exit__(None, None, None)
            self._saved_ctx = None

    def begin_backward(self) -> None:
        self.end_forward()
        last = self._span.layer if self._span else None
        self._close()
        self._open(last, backward=True)
        self._span.loss = True

    def end_backward(self) -> None:
        self._close()
        self._span = None

    def note_created(self, key: int) -> None:
        """A storage was allocated (the fake tracker calls this): remember the forward span's layer."""
        if self._saved_ctx is not None and not self.in_backward:
            self._created[key] = self.current_layer

    def _retain(self, roots: list[Any]) -> None:
        """Move the storages reachable from ``roots`` out of saved bytes into retained bytes."""
        def resolve(layer: int | None) -> int | None:
            return self._prelude_layer if layer is None else layer

        done: set[int] = set()
        for t in reachable_tensors(roots):
            key = storage_key(t)
            # only what the step allocated (the fake tracker saw it made, or an op saved it)
            if key in self.excluded_storages or key in done or (key not in self._created and key not in self._saver):
                continue
            done.add(key)
            saver = self._saver.get(key)
            if saver is not None and resolve(saver[0]) is not None:
                self.records[resolve(saver[0])].saved_bytes -= saver[1]
                if self._span is not None and self._span.layer == resolve(saver[0]) and not self._span.backward:
                    self._span.saved0 -= saver[1]  # the open span's scratch stays what it measured
            maker = resolve(self._created[key]) if key in self._created else (
                resolve(saver[0]) if saver is not None else None)
            if maker is None:
                maker = self.current_layer
            if maker is None:
                continue
            n = saver[1] if saver is not None else self.nbytes(t)
            self.records[maker].retained_bytes += n
            if saver is None:
                self.records[maker].retained_unsaved += n

    # ---- attribution targets ---------------------------------------------------------
    @property
    def current_layer(self) -> int | None:
        return self._span.layer if self._span else None

    @property
    def in_backward(self) -> bool:
        return bool(self._span and self._span.backward)

    def add_flops(self, n: int) -> None:
        layer = self.current_layer
        if layer is None:
            self.prelude_flops += n
        else:
            self.records[layer].flops += n

    def watch_tensors(self, tensors: Iterable[torch.Tensor]) -> None:
        """Remember the first layer during whose forward span each of ``tensors`` is used."""
        for t in tensors:
            self._watch.setdefault(id(t), None)

    def note_inputs(self, args: Any) -> None:
        """Called per op in the forward: records first use of watched tensors."""
        if not self._watch or self.in_backward:
            return
        for a in tree_leaves(args):
            if isinstance(a, torch.Tensor) and self._watch.get(id(a), -1) is None:
                self._watch[id(a)] = self.current_layer if self.current_layer is not None else -2

    def first_use(self, t: torch.Tensor) -> int | None:
        """Layer that first used ``t`` (-2: before any layer, None: never)."""
        return self._watch.get(id(t))

    # ---- hooks -----------------------------------------------------------------------
    def _make_pre(self, i: int) -> Callable[..., None]:
        def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
            rec = self.records[i]
            if rec.order < 0:
                rec.order = self._next_order
                self._next_order += 1
                rec.input_bytes = tensor_bytes((args, kwargs))
                t = _first_tensor((args, kwargs))
                if t is not None:
                    rec.input_geom = InputGeometry(tuple(t.shape), t.is_floating_point())
            if self.training and not self.in_backward:
                self._roots.extend(v for v in (*args, *kwargs.values()) if stateful(v))
            self._stack.append(i)
            self._enter_forward(i)
        return pre

    def _make_post(self, i: int) -> Callable[..., None]:
        def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            rec = self.records[i]
            if not rec.outputs_seen:
                rec.outputs_seen = True
                rec.output_bytes = tensor_bytes(output)
                if self.on_progress is not None:
                    self.on_progress()
            if self._stack and self._stack[-1] == i:
                self._stack.pop()
            if self._stack:  # a layer called inside another: the outer one resumes
                self._close()
                self._open(self._stack[-1], backward=False)
            if self.training and torch.is_grad_enabled():
                for t in tree_leaves(output):
                    if isinstance(t, torch.Tensor) and t.requires_grad:
                        t.register_hook(self._make_grad_hook(i))
        return post

    def _make_grad_hook(self, i: int) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            if not self.records[i].grad_seen and self.on_progress is not None:
                self.on_progress()
            self.records[i].grad_seen = True
            if self._span is not None and self._span.backward and self._span.layer != i:
                self._close()
                self._open(i, backward=True)
        return hook

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        key = storage_key(t)
        if key in self.excluded_storages or key in self._seen_saved or self.in_backward:
            return t
        self._seen_saved.add(key)
        n = self.nbytes(t)
        layer = self.current_layer
        self._saver[key] = (layer, n)
        if layer is None:
            self._prelude_saved += n
        else:
            self.records[layer].saved_bytes += n
        return t

    # ---- spans -----------------------------------------------------------------------
    def _enter_forward(self, i: int) -> None:
        span = self._span
        if span is not None and span.layer is None and not span.backward:
            # ops before the first layer belong to it: keep the span, adopt the layer
            rec = self.records[i]
            span.layer = i
            self._prelude_layer = i
            span.saved0 = rec.saved_bytes
            rec.saved_bytes += self._prelude_saved
            rec.flops += self.prelude_flops
            self._prelude_saved = self.prelude_flops = 0
            return
        self._close()
        self._open(i, backward=False)

    def _open(self, layer: int | None, backward: bool) -> None:
        saved0 = self.records[layer].saved_bytes if layer is not None else 0
        self._span = _Span(layer, backward, self.memory.current(), saved0)
        self.memory.start_span()

    def _close(self) -> None:
        span = self._span
        if span is None or span.layer is None:
            return
        peak = max(self.memory.span_peak(), span.entry)
        rec = self.records[span.layer]
        rec.peak_abs = max(rec.peak_abs, peak)
        if span.backward:
            # the loss's backward makes this layer's output gradient: the incoming gradient
            # the memory model charges every layer apart from its scratch
            incoming = rec.output_bytes if span.loss else 0
            rec.bwd_scratch = max(rec.bwd_scratch, peak - span.entry - incoming)
        else:
            saved = rec.saved_bytes - span.saved0
            rec.fwd_scratch = max(rec.fwd_scratch, peak - span.entry - saved)
        self._span = None


def _unpack(t: torch.Tensor) -> torch.Tensor:
    return t
