"""Reversible replacement of one module's ``forward``.

Every executor mechanism works by composing wrappers around the module's own
forward and installing the result as an instance attribute; ``remove()`` puts back
exactly what was there (the class method, or a forward some other library had
installed), so no attribute, hook or closure is left behind.

Example:
    >>> import torch
    >>> from memscale.executor.forward_patch import ForwardPatch
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
from typing import Any, Callable

import torch

from memscale.executor.errors import ExecutorError

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
