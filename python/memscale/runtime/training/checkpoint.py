"""Per-layer activation checkpointing (non-reentrant recompute).

The layer's forward runs under ``torch.utils.checkpoint.checkpoint(use_reentrant=False,
preserve_rng_state=True)``: only its inputs are kept for backward and the forward is
re-run during backward with the same RNG state, so dropout masks match. Positional and
keyword tensors, and any output structure (tuples, dicts, dataclass-like outputs), are
supported by torch's non-reentrant implementation.

Buffers mutated by the forward (BatchNorm running statistics, counters) would otherwise
be updated a second time by the recompute; the recompute context restores every buffer
the original forward changed, so a checkpointed model's state evolves exactly like the
unwrapped one's.

Python state the forward receives and changes (a Hugging Face ``Cache`` object that the
layer appends its keys and values to, a dict of flags it sets) would make the recompute
take another path than the forward (the cache already holds this layer's entries the
second time). :class:`_StateGuard` records, by reference, the contents of every mutable
object reachable from the layer's non-tensor arguments before the forward; the recompute
runs on exactly that state and the state as it was before the recompute is put back
afterwards, so the recompute sees what the forward saw and leaves no trace. A forward that
writes a tensor of that state in place (a preallocated static cache) cannot be restored
by reference: it is refused at its first call, naming the layer.

Example:
    >>> import torch
    >>> from memscale.runtime.training.checkpoint import checkpoint_module
    >>> block = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU())
    >>> patch = checkpoint_module(block)
    >>> block(torch.randn(2, 4, requires_grad=True)).sum().backward()
    >>> patch.remove()
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import checkpoint as _torch_checkpoint

from memscale.errors import ExecutorError
from memscale.profiler.retained import StateTooLarge, walk_state
from memscale.profiler.retained import stateful as _stateful
from memscale.profiler.storage import storage_key
from memscale.runtime.hooks import ForwardPatch


def _named_buffer_slots(module: torch.nn.Module) -> list[tuple[torch.nn.Module, str]]:
    """(owner, buffer name) for every buffer slot under ``module``."""
    return [(owner, name) for owner in module.modules() for name in owner._buffers]


#: aten ops that write running statistics in place without declaring it in their schema
#: (argument positions of running_mean, running_var).
_UNDECLARED_WRITES: dict[str, tuple[int, ...]] = {
    "aten::native_batch_norm": (3, 4),
    "aten::cudnn_batch_norm": (3, 4),
    "aten::miopen_batch_norm": (3, 4),
}


class _MutationRecorder(TorchDispatchMode):
    """Records the storages that ops write to in place (by their schema's ``a!`` args).

    Version counters are not enough: batch_norm updates ``running_mean`` inside its
    kernel without bumping the buffer's version. The schema is the general signal; the
    batch-norm kernels whose schemas omit the ``a!`` on their running statistics are
    listed in ``_UNDECLARED_WRITES``.
    """

    _writes_cache: dict[Any, tuple[int, ...]] = {}

    def __init__(self) -> None:
        super().__init__()
        self.written: set[int] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        positions = self._writes_cache.get(func)
        if positions is None:
            positions = tuple(i for i, a in enumerate(func._schema.arguments)
                              if a.alias_info is not None and a.alias_info.is_write)
            positions += _UNDECLARED_WRITES.get(func._schema.name, ())
            self._writes_cache[func] = positions
        if positions:
            schema_args = func._schema.arguments
            for i in positions:
                value = args[i] if i < len(args) else kwargs.get(schema_args[i].name)
                if isinstance(value, torch.Tensor):
                    self.written.add(storage_key(value))
        return func(*args, **kwargs)


class _BufferGuard:
    """Finds the buffers the original forward changed; restores them after the recompute."""

    def __init__(self, module: torch.nn.Module) -> None:
        self._module = module
        self._mutated: list[tuple[torch.nn.Module, str]] = []

    @contextlib.contextmanager
    def forward(self) -> Iterator[None]:
        slots = _named_buffer_slots(self._module)
        if not slots:
            yield
            return
        before = [owner._buffers[name] for owner, name in slots]
        recorder = _MutationRecorder()
        with recorder:
            yield
        self._mutated = [
            slot for slot, obj in zip(slots, before)
            if slot[0]._buffers.get(slot[1]) is not obj
            or (obj is not None and storage_key(obj) in recorder.written)
        ]

    @contextlib.contextmanager
    def recompute(self) -> Iterator[None]:
        saved = []
        for owner, name in self._mutated:
            obj = owner._buffers.get(name)
            saved.append((owner, name, obj, None if obj is None else obj.detach().clone()))
        try:
            yield
        finally:
            with torch.no_grad():
                for owner, name, obj, value in saved:
                    owner._buffers[name] = obj
                    if obj is not None:
                        obj.copy_(value)


#: At most this many objects are recorded per call (a cache object graph is a few dozen).
_MAX_STATE_OBJECTS = 100_000


def _snapshot(roots: list[Any]) -> tuple[list[tuple[Any, str, Any]], list[tuple[torch.Tensor, int]]]:
    """(object, kind, shallow copy of its contents) for every mutable object reachable from
    ``roots``, and (tensor, version) for every tensor reachable from them."""
    contents: list[tuple[Any, str, Any]] = []
    tensors: list[tuple[torch.Tensor, int]] = []
    try:
        for obj in walk_state(roots, _MAX_STATE_OBJECTS):
            if isinstance(obj, torch.Tensor):
                tensors.append((obj, obj._version))
            elif isinstance(obj, list):
                contents.append((obj, "list", list(obj)))
            elif isinstance(obj, dict):
                contents.append((obj, "dict", dict(obj)))
            elif isinstance(obj, set):
                contents.append((obj, "set", set(obj)))
            elif not isinstance(obj, (tuple, frozenset)) and hasattr(obj, "__dict__"):
                contents.append((obj, "attrs", dict(vars(obj))))
    except StateTooLarge:
        raise ExecutorError(f"a checkpointed layer's arguments reach over {_MAX_STATE_OBJECTS} objects") from None
    return contents, tensors


def _restore(contents: list[tuple[Any, str, Any]]) -> None:
    for obj, kind, content in contents:
        if kind == "list":
            obj[:] = content
        elif kind == "attrs":
            target = vars(obj)
            target.clear()
            target.update(content)
        else:  # dict, set
            obj.clear()
            obj.update(content)


class _StateGuard:
    """The recompute runs on the Python state the forward saw, and leaves none behind.

    ``roots`` are the layer's non-tensor arguments (a ``Cache`` object, ...). The forward
    records the contents of every mutable object reachable from them, by reference (no
    tensor is copied; a layer that rebinds ``cache.keys = torch.cat(...)`` leaves the old
    tensor referenced here until its backward); the recompute restores those contents,
    runs, then restores the contents it found. A tensor of that state written in place by
    the forward cannot be restored by reference: refused, naming the layer.
    """

    def __init__(self, roots: list[Any], name: str) -> None:
        self._roots = roots
        self._name = name
        self._before: list[tuple[Any, str, Any]] = []

    @contextlib.contextmanager
    def forward(self) -> Iterator[None]:
        self._before, tensors = _snapshot(self._roots)
        yield
        for t, version in tensors:
            if t._version != version:
                raise ExecutorError(
                    f"layer {self._name!r}: its forward wrote in place a tensor held by a non-tensor "
                    f"argument ({type(self._roots[0]).__name__}, e.g. a preallocated cache), which "
                    "the recompute of a checkpointed layer would see changed; call the model without "
                    "that state (e.g. use_cache=False) or turn checkpoint off for this layer")

    @contextlib.contextmanager
    def recompute(self) -> Iterator[None]:
        current, _ = _snapshot(self._roots)
        _restore(self._before)
        try:
            yield
        finally:
            _restore(current)


def check_checkpointable(module: torch.nn.Module, name: str) -> None:
    """Refuse modules that overwrite their own input (``inplace=True``).

    Checkpointing keeps a layer's input to recompute the layer; a module that writes
    its result into its input destroys it, so the recompute would read the wrong values
    (torch raises deep inside backward). Modules whose forward mutates the input in
    some other way are caught at their first call by ``checkpointed``.
    """
    if getattr(module, "inplace", False) is True:
        raise ExecutorError(f"layer {name!r}: {type(module).__name__}(inplace=True) overwrites its "
                            "input, which checkpointing must keep to recompute it; turn "
                            "checkpoint off for this layer")


def checkpoint_refusal(module: torch.nn.Module, name: str) -> str | None:
    """Why :func:`check_checkpointable` refuses ``module`` (None: it can be checkpointed).
    The profiler records this as the layer's capability, so the engine never plans a
    checkpoint this runtime refuses."""
    try:
        check_checkpointable(module, name)
    except ExecutorError as exc:
        return str(exc)
    return None


def checkpointed(forward: Callable[..., Any], module: torch.nn.Module,
                 name: str = "") -> Callable[..., Any]:
    """Return ``forward`` wrapped in non-reentrant checkpointing of ``module``.

    Tensor keyword arguments are passed to checkpoint positionally so they take the
    same saved-tensor path as positional ones (and can be offloaded by an outer
    activation-offload context); non-tensor keywords are bound in a closure, which
    also avoids clashes with checkpoint's own keyword names.
    """
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        tensor_keys = [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
        static = {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)}
        n_pos = len(args)

        def call(*flat: Any) -> Any:
            return forward(*flat[:n_pos], **static, **dict(zip(tensor_keys, flat[n_pos:])))

        inputs = [*args, *(kwargs[k] for k in tensor_keys)]
        if torch.compiler.is_compiling():
            # Under torch.compile, checkpoint's context_fn must be TorchDispatchModes and
            # version counters are not traced: compiled graphs go without the buffer
            # guard and the in-place check (documented limit of wrap + torch.compile).
            return _torch_checkpoint(call, *inputs, use_reentrant=False, preserve_rng_state=True)
        guard = _BufferGuard(module)
        roots = [v for v in (*args, *static.values()) if _stateful(v)]
        state = _StateGuard(roots, name) if roots else None

        def context_fn() -> tuple[Any, Any]:
            if state is None:
                return guard.forward(), guard.recompute()
            return _both(guard.forward(), state.forward()), _both(guard.recompute(), state.recompute())

        versions = [t._version if isinstance(t, torch.Tensor) else None for t in inputs]
        out = _torch_checkpoint(call, *inputs, use_reentrant=False, preserve_rng_state=True,
                                context_fn=context_fn)
        for t, v in zip(inputs, versions):
            if v is not None and t._version != v:
                # Fail here, naming the layer, rather than with autograd's generic
                # "modified by an inplace operation" error in the middle of backward.
                raise ExecutorError(
                    f"layer {name!r}: its forward modified an input tensor in place, which "
                    "checkpointing must keep unchanged to recompute the layer; turn "
                    "checkpoint off for this layer")
        return out
    return run


@contextlib.contextmanager
def _both(first: Any, second: Any) -> Iterator[None]:
    with first, second:
        yield


def checkpoint_module(module: torch.nn.Module, name: str = "") -> ForwardPatch:
    """Checkpoint ``module`` on its own; ``.remove()`` on the result restores it."""
    check_checkpointable(module, name)
    return ForwardPatch(module, lambda fwd: checkpointed(fwd, module, name), name=name)
