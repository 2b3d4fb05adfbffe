"""Tiled output head + loss for models that compute their loss inside ``forward``.

Hugging Face style models call ``logits = self.lm_head(hidden)`` and, when ``labels``
are given, ``loss = F.cross_entropy(logits.view(-1, vocab), shifted_labels.view(-1))``
in the same forward. When a plan tiles such a model's ``lm_head`` layer (plan kind
``lm_head``), the executor:

1. wraps the model's forward: while a call with ``labels`` (not ``None``) runs, the
   head is in *deferred* mode;
2. in deferred mode the head returns a :class:`DeferredLogits` instead of computing
   the logits: a stand-in that knows the head's input and replays, on that input,
   the operations that do not touch the vocabulary axis (``view``/``reshape`` keeping
   the last dim, indexing/slicing leading dims, ``contiguous``, ``float``/``to(dtype)``,
   ``size``/``shape``/``dim``/``device``/``dtype``);
3. ``F.cross_entropy`` (or ``nn.CrossEntropyLoss``) applied to it becomes
   :func:`memscale.nn.linear_cross_entropy` on the matching hidden states, so the full
   logits never exist.

Limits: the logits must come from an ``nn.Linear`` (the head layer itself, or the
widest Linear inside it, e.g. a BERT-style transform + decoder head; that Linear is the
one deferred) called with one tensor, and the model's forward must accept ``labels``
(by name or ``**kwargs``) — otherwise ``apply_plan`` refuses. Anything the head module
does after that Linear (adding a separate bias, scaling) counts as a use of the logits. ``cross_entropy`` with ``weight`` or ``label_smoothing`` is not fused. Inside
the model's forward, any other use of the logits (softmax, soft-capping, scaling,
returning them through an op) raises :class:`ExecutorError` naming the operation,
because the plan's memory saving would silently not happen; turn tiling off for the
head (``layer_overrides``) for such models. After forward returns, using the returned
logits (e.g. ``out.logits.argmax(-1)`` for accuracy) materialises them once, with a
warning in the log. Calls without labels return ordinary logits.

Example:
    >>> import torch, torch.nn.functional as F
    >>> from memscale.runtime.training.head_loss import DeferredLogits
    >>> head = torch.nn.Linear(8, 50)
    >>> h = torch.randn(2, 5, 8)
    >>> logits = DeferredLogits(h, head, chunks=2)
    >>> y = torch.randint(0, 50, (2, 5))
    >>> loss = F.cross_entropy(logits[:, :-1].reshape(-1, 50), y[:, 1:].reshape(-1))
    >>> torch.allclose(loss, F.cross_entropy(head(h)[:, :-1].reshape(-1, 50), y[:, 1:].reshape(-1)))
    True
"""
from __future__ import annotations

import contextlib
import contextvars
import inspect
import logging
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from memscale.errors import ExecutorError
from memscale.nn import linear_cross_entropy

log = logging.getLogger("memscale")

# Set while a wrapped model's forward runs with labels; holds the model's class name.
_deferring: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "memscale_deferring_head", default=None)


@contextlib.contextmanager
def deferring(model_name: str) -> Iterator[None]:
    token = _deferring.set(model_name)
    try:
        yield
    finally:
        _deferring.reset(token)


def _normalize_index(index: Any, ndim: int) -> tuple[Any, ...] | None:
    """The index if it leaves the last (vocabulary) axis whole, else None."""
    items = index if isinstance(index, tuple) else (index,)
    if any(i is None for i in items):
        return None  # new axes shift positions; keep the rule simple
    if any(i is Ellipsis for i in items):
        after = items[items.index(Ellipsis) + 1:]
        if not after:
            return items
        last = after[-1]
        return items if isinstance(last, slice) and last == slice(None) else None
    if len(items) < ndim:
        return items
    if len(items) == ndim and isinstance(items[-1], slice) and items[-1] == slice(None):
        return items
    return None


class DeferredLogits:
    """Stand-in for ``head(hidden)`` that computes a cross-entropy without the full logits."""

    def __init__(self, hidden: torch.Tensor, head: torch.nn.Linear, chunks: int,
                 dtype: torch.dtype | None = None, layer: str = "lm_head") -> None:
        self._hidden = hidden
        self._head = head
        self._chunks = chunks
        self._layer = layer
        self._dtype = dtype or torch.promote_types(hidden.dtype, head.weight.dtype)
        self._full: torch.Tensor | None = None

    # -- metadata --------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self._hidden.shape[:-1], self._head.out_features))

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return self._hidden.dim()

    ndim = property(dim)

    def __len__(self) -> int:
        return len(self._hidden)

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._hidden.device

    @property
    def requires_grad(self) -> bool:
        return self._hidden.requires_grad or self._head.weight.requires_grad

    def _like(self, hidden: torch.Tensor, dtype: torch.dtype | None = None) -> "DeferredLogits":
        return DeferredLogits(hidden, self._head, self._chunks, dtype or self._dtype, self._layer)

    # -- operations that commute with the head --------------------------------------------
    def view(self, *shape: Any) -> "DeferredLogits":
        return self._reshape("view", shape)

    def reshape(self, *shape: Any) -> "DeferredLogits":
        return self._reshape("reshape", shape)

    def _reshape(self, op: str, shape: tuple[Any, ...]) -> "DeferredLogits":
        if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
            shape = tuple(shape[0])
        if not shape or shape[-1] != self._head.out_features:
            return self._unsupported(f"{op}{tuple(shape)}", lambda full: getattr(full, op)(*shape))
        hidden = getattr(self._hidden, op)(*shape[:-1], self._hidden.shape[-1])
        return self._like(hidden)

    def contiguous(self, *args: Any, **kwargs: Any) -> "DeferredLogits":
        return self._like(self._hidden.contiguous(*args, **kwargs))

    def float(self) -> "DeferredLogits":
        return self._like(self._hidden, torch.float32)

    def to(self, *args: Any, **kwargs: Any) -> Any:
        target = kwargs.get("dtype", args[0] if args else None)
        device = kwargs.get("device")
        if isinstance(target, torch.dtype) and len(args) <= 1 and device is None \
                and set(kwargs) <= {"dtype"}:
            return self._like(self._hidden, target)
        if isinstance(target, (str, torch.device)) and torch.device(target) == self.device \
                and len(args) == 1 and not kwargs:
            return self
        return self._unsupported(f"to({', '.join(map(repr, args))})",
                                 lambda full: full.to(*args, **kwargs))

    def __getitem__(self, index: Any) -> "DeferredLogits":
        norm = _normalize_index(index, self.dim())
        if norm is None:
            return self._unsupported(f"__getitem__({index!r})", lambda full: full[index])
        return self._like(self._hidden[norm if isinstance(index, tuple) else index])

    # -- the fused loss ----------------------------------------------------------------
    def _cross_entropy(self, target: torch.Tensor, weight: Any = None, size_average: Any = None,
                       ignore_index: int = -100, reduce: Any = None, reduction: str = "mean",
                       label_smoothing: float = 0.0) -> Any:
        if weight is not None or label_smoothing or size_average is not None or reduce is not None:
            return None
        if self.dim() != 2 or not isinstance(target, torch.Tensor) or target.dim() != 1:
            return None
        loss = linear_cross_entropy(self._hidden, self._head, target, chunks=self._chunks,
                                    ignore_index=ignore_index, reduction=reduction)
        return loss.to(self._dtype)

    @classmethod
    def __torch_function__(cls, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.cross_entropy and args and isinstance(args[0], DeferredLogits):
            fused = args[0]._cross_entropy(*args[1:], **kwargs)
            if fused is not None:
                return fused
        holder = next(a for a in (*args, *kwargs.values()) if isinstance(a, DeferredLogits))
        holder._refuse_inside_forward(getattr(func, "__name__", repr(func)))
        real_args = tuple(a.materialize() if isinstance(a, DeferredLogits) else a for a in args)
        real_kwargs = {k: v.materialize() if isinstance(v, DeferredLogits) else v
                       for k, v in kwargs.items()}
        return func(*real_args, **real_kwargs)

    # -- anything else ----------------------------------------------------------------------
    def _refuse_inside_forward(self, op: str) -> None:
        model = _deferring.get()
        if model is not None:
            raise ExecutorError(
                f"layer {self._layer!r}: the plan tiles the output head + loss, but "
                f"{model}.forward uses its logits in {op!r}, which needs the full logits; "
                "only view/reshape/slicing/float and F.cross_entropy (without weight or "
                "label_smoothing) can be fused. Turn tiling off for this layer "
                "(layer_overrides) or compute the loss with memscale.nn.linear_cross_entropy.")

    def _unsupported(self, op: str, on_full: Callable[[torch.Tensor], Any]) -> Any:
        self._refuse_inside_forward(op)
        return on_full(self.materialize())

    def materialize(self) -> torch.Tensor:
        """The full logits (computed once, kept for later uses of this object)."""
        if self._full is None:
            log.warning("memscale: materialising the full logits %s of tiled layer %r because "
                        "they were used after forward; this costs their full memory",
                        tuple(self.shape), self._layer)
            self._full = F.linear(self._hidden, self._head.weight, self._head.bias).to(self._dtype)
        return self._full

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        self._refuse_inside_forward(f"Tensor.{name}")
        return getattr(self.materialize(), name)

    def __bool__(self) -> bool:
        self._refuse_inside_forward("Tensor.__bool__")
        return bool(self.materialize())

    def __repr__(self) -> str:
        return (f"DeferredLogits(shape={tuple(self.shape)}, dtype={self._dtype}, "
                f"layer={self._layer!r})")


def _operator(name: str) -> Callable[..., Any]:
    # Python looks operators up on the type, not through __getattr__: each one is
    # spelled out, refuses inside a deferring forward, and otherwise runs on the
    # materialised logits.
    def op(self: DeferredLogits, *args: Any) -> Any:
        self._refuse_inside_forward(f"Tensor.{name}")
        real = tuple(a.materialize() if isinstance(a, DeferredLogits) else a for a in args)
        return getattr(self.materialize(), name)(*real)
    op.__name__ = name
    return op


for _name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
              "__truediv__", "__rtruediv__", "__floordiv__", "__rfloordiv__", "__mod__",
              "__pow__", "__rpow__", "__matmul__", "__rmatmul__", "__neg__", "__pos__",
              "__abs__", "__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__",
              "__and__", "__or__", "__xor__", "__invert__", "__iter__", "__array__"):
    setattr(DeferredLogits, _name, _operator(_name))
DeferredLogits.__hash__ = object.__hash__  # type: ignore[method-assign]  # __eq__ above resets it


def labels_parameter(forward: Callable[..., Any]) -> inspect.Signature | None:
    """The forward's signature if it can receive ``labels`` (by name or ``**kwargs``)."""
    try:
        sig = inspect.signature(forward)
    except (TypeError, ValueError):
        return None
    params = sig.parameters
    if "labels" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return sig
    return None


def labels_in_call(signature: inspect.Signature, args: tuple, kwargs: dict) -> Any:
    """The ``labels`` a call with ``args``/``kwargs`` passes (None: none, or the call does not bind)."""
    try:
        bound = signature.bind_partial(*args, **kwargs).arguments
    except TypeError:
        return None
    labels = bound.get("labels")
    if labels is None:
        extra = next((v for k, v in bound.items()
                      if signature.parameters[k].kind is inspect.Parameter.VAR_KEYWORD), {})
        labels = extra.get("labels") if isinstance(extra, dict) else None
    return labels


def with_labels_detection(forward: Callable[..., Any], signature: inspect.Signature,
                          model_name: str) -> Callable[..., Any]:
    """Run ``forward`` in deferred-head mode whenever it is called with labels."""
    def run(*args: Any, **kwargs: Any) -> Any:
        if labels_in_call(signature, args, kwargs) is None:
            return forward(*args, **kwargs)
        with deferring(model_name):
            return forward(*args, **kwargs)
    return run


def deferred_head(forward: Callable[..., Any], head: torch.nn.Linear, chunks: int,
                  layer: str) -> Callable[..., Any]:
    """Make the head return DeferredLogits while its model runs with labels."""
    def run(*args: Any, **kwargs: Any) -> Any:
        if _deferring.get() is None:
            return forward(*args, **kwargs)
        if len(args) != 1 or kwargs or not isinstance(args[0], torch.Tensor):
            raise ExecutorError(f"layer {layer!r}: a tiled output head must be called as "
                                f"head(hidden) with one tensor; got {len(args)} positional and "
                                f"{sorted(kwargs)} keyword arguments")
        return DeferredLogits(args[0], head, chunks, layer=layer)
    return run


def find_logits_linear(head: torch.nn.Module, layer: str) -> tuple[str, torch.nn.Linear]:
    """The ``nn.Linear`` of a head layer that produces the logits: the head itself, or its
    Linear with the most output features (a transform + decoder head such as BERT's)."""
    if isinstance(head, torch.nn.Linear):
        return "", head
    linears = [(n, m) for n, m in head.named_modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ExecutorError(f"layer {layer!r}: the plan tiles it as the output head, but it is a "
                            f"{type(head).__name__} without an nn.Linear; head+loss tiling needs "
                            "the logits to come from an nn.Linear")
    widest = max(m.out_features for _, m in linears)
    top = [(n, m) for n, m in linears if m.out_features == widest]
    if len(top) > 1:
        raise ExecutorError(f"layer {layer!r}: cannot tell which Linear makes the logits: "
                            f"{[n for n, _ in top]} all have {widest} outputs")
    return top[0]


def check_head(model: torch.nn.Module, head: torch.nn.Module, layer: str
               ) -> tuple[inspect.Signature, str, torch.nn.Linear]:
    """Raise ExecutorError unless the head+loss of ``model`` can be tiled.

    Returns the model forward's signature and the path (under the head) and module of
    the Linear that makes the logits.
    """
    if head is model:
        raise ExecutorError(f"layer {layer!r}: the output head cannot be the model itself")
    sub, linear = find_logits_linear(head, layer)
    sig = labels_parameter(model.forward)
    if sig is None:
        raise ExecutorError(
            f"layer {layer!r}: the plan tiles the output head + loss, but "
            f"{type(model).__name__}.forward takes no `labels`, so its loss is computed outside "
            "the model; call memscale.nn.linear_cross_entropy(hidden, head, targets) there "
            "and turn tiling off for this layer")
    return sig, sub, linear


def head_loss_refusal(model: torch.nn.Module, head: torch.nn.Module, layer: str, *,
                      example_args: tuple = (), example_kwargs: dict | None = None,
                      loss_outside: bool = False) -> str | None:
    """Why the head + loss of ``model`` cannot be fused and tiled in this call convention
    (None: it can). The profiler records this as the ``lm_head`` layer's capability, so
    the engine never plans a head tiling the executor would refuse or could not realise:

    * :func:`check_head` refuses (no ``nn.Linear`` makes the logits, forward takes no
      ``labels``);
    * the example call passes no ``labels``: the loss is not computed inside forward in
      this call convention, so deferring the logits would never happen;
    * ``loss_outside`` (``wrap(..., loss_fn=...)``): the caller computes the loss from the
      returned logits. The fusion replaces ``F.cross_entropy`` *inside* forward; a loss
      outside would receive (and materialise) the full logits, so the plan's saving would
      not happen. Such a loop saves the logits by calling
      ``memscale.nn.linear_cross_entropy(hidden, head, targets)`` itself.
    """
    try:
        signature, _, _ = check_head(model, head, layer)
    except ExecutorError as exc:
        return str(exc)
    if loss_outside:
        return (f"layer {layer!r}: the loss is computed outside {type(model).__name__}.forward "
                "(wrap(..., loss_fn=...)), which receives the full logits; head + loss fusion "
                "needs the cross-entropy inside forward (called with `labels`), or call "
                "memscale.nn.linear_cross_entropy(hidden, head, targets) in the loss")
    if labels_in_call(signature, tuple(example_args), dict(example_kwargs or {})) is None:
        return (f"layer {layer!r}: the example inputs pass no `labels` to "
                f"{type(model).__name__}.forward, so its loss is not computed inside forward; "
                "head + loss fusion needs a call with labels")
    return None
