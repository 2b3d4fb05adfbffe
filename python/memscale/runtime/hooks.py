"""How the runtime touches a model: one patch protocol and one registry of wrapped models.

Patches. Every mechanism installs itself through a patch object whose ``remove()``
puts back exactly what was there, so no attribute, hook or closure is left behind:

* :class:`ForwardPatch` composes wrappers around a module's own forward and installs
  the result as an instance attribute (training techniques, the first-step monitor);
* :class:`ModuleHooks` registers torch forward pre/post hooks (the weight pager).

Registry. A wrapped model has exactly one handle (training or inference), found with
:func:`handle_of`; :func:`register` refuses a second one. A handle has ``plan`` and
``remove()``; ``memscale.plan_of`` and ``memscale.unwrap`` only ever ask here.

Example:
    >>> import torch
    >>> from memscale.runtime.hooks import ForwardPatch
    >>> lin = torch.nn.Linear(2, 2)
    >>> patch = ForwardPatch(lin, lambda fwd: (lambda x: fwd(x) * 2))
    >>> "forward" in vars(lin)
    True
    >>> patch.remove()
    >>> "forward" in vars(lin)
    False
"""
from __future__ import annotations

import functools
import weakref
from typing import Any, Callable, TypeVar

import torch

from ..errors import ExecutorError, MemScaleError

H = TypeVar("H")

_HANDLES: "weakref.WeakKeyDictionary[torch.nn.Module, Any]" = weakref.WeakKeyDictionary()


def handle_of(model: torch.nn.Module, kind: type[H] | None = None) -> Any:
    """The handle of the wrapped ``model`` (of class ``kind``, when given), else None."""
    handle = _HANDLES.get(model)
    return handle if kind is None or isinstance(handle, kind) else None


def register(model: torch.nn.Module, handle: Any) -> None:
    """Record ``handle`` as ``model``'s one handle; a model already wrapped is refused."""
    current = _HANDLES.get(model)
    if current is not None and current is not handle:
        raise MemScaleError(f"model: this {type(model).__name__} is already wrapped "
                            f"({type(current).__name__}); call memscale.unwrap(model) first")
    _HANDLES[model] = handle


def unregister(model: torch.nn.Module, handle: Any) -> None:
    """Forget ``handle`` (only if it is still ``model``'s handle)."""
    if _HANDLES.get(model) is handle:
        del _HANDLES[model]

_MARK = "_memscale_patched"


def is_patched(module: torch.nn.Module) -> bool:
    """True when a MemScale wrapper is installed as this module's forward."""
    return bool(getattr(vars(module).get("forward"), _MARK, False))


class ForwardPatch:
    """Install ``make(original_forward)`` as ``module.forward``; ``remove()`` undoes it.

    ``stack=True`` allows wrapping a forward MemScale already patched (the outer patch
    must then be removed first).
    """

    def __init__(self, module: torch.nn.Module,
                 make: Callable[[Callable[..., Any]], Callable[..., Any]],
                 name: str = "", stack: bool = False) -> None:
        if is_patched(module) and not stack:
            raise ExecutorError(f"layer {name!r}: a MemScale plan is already applied to this "
                                "module; remove it (handle.remove() / memscale.unwrap) first")
        self.module = module
        self.name = name
        self._had_instance_forward = "forward" in vars(module)
        self._previous = vars(module).get("forward")
        original = module.forward  # bound class method, or the instance forward already there
        wrapper = make(original)
        # functools.wraps keeps the original name/doc/signature for introspection
        # (inspect.signature(model.forward) keeps working, e.g. for `labels=` detection).
        installed = functools.wraps(original)(_forwarder(wrapper))
        setattr(installed, _MARK, True)
        self._installed = installed
        vars(module)["forward"] = installed
        self._removed = False

    def remove(self) -> None:
        """Restore the forward that was there before; idempotent."""
        if self._removed:
            return
        current = vars(self.module).get("forward")
        if current is not self._installed:
            raise ExecutorError(f"layer {self.name!r}: its forward was replaced after MemScale "
                                "patched it; restore that change first, then remove the plan")
        if self._had_instance_forward:
            vars(self.module)["forward"] = self._previous
        else:
            del vars(self.module)["forward"]
        self._removed = True


def _forwarder(fn: Callable[..., Any]) -> Callable[..., Any]:
    # A fresh function object, so functools.wraps never mutates the mechanism's own
    # wrapper (which may be shared) and the mark lives only on what we installed.
    def forward(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)
    return forward


class ModuleHooks:
    """Torch forward pre/post hooks on a set of modules, removed together.

    ``post`` runs even when the forward raised (``always_call``), so what ``pre``
    acquired is always released.
    """

    def __init__(self) -> None:
        self._handles: list[Any] = []

    def add(self, module: torch.nn.Module, pre: Callable[[], None], post: Callable[[], None]) -> None:
        self._handles.append(module.register_forward_pre_hook(lambda _m, _a: pre()))
        self._handles.append(module.register_forward_hook(lambda _m, _a, _o: post(), always_call=True))

    def remove(self) -> None:
        """Remove every hook; idempotent."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
