"""Small input coercions every entry point shares (one copy of each).

Example:
    >>> from memscale._coerce import as_config, format_bytes
    >>> as_config(None, {"memory_budget": "1GiB"}).memory_budget
    1073741824
    >>> format_bytes(1536)
    '1.50 KiB'
"""
from __future__ import annotations

from typing import Any, Mapping

from . import _C
from .config import Config
from .errors import MemScaleError

#: Bytes in binary units for people ("1.50 GiB"): the engine's own formatter.
format_bytes = _C.format_bytes


def as_config(cfg: Any = None, overrides: Mapping[str, Any] | None = None, *, caller: str = "cfg",
              allow_dict: bool = True, allow_both: bool = True) -> Config:
    """A ``Config`` from a Config (or, with ``allow_dict``, a dict of its keys) or None,
    with ``overrides`` (Config keys given as keyword arguments) applied on top.

    ``allow_both=False`` refuses a ``cfg`` together with ``overrides`` (MemScaleError
    naming ``caller``); any other ``cfg`` is a TypeError; invalid keys or values are a
    ConfigError.
    """
    overrides = dict(overrides or {})
    if cfg is not None and overrides and not allow_both:
        raise MemScaleError(f"{caller}: pass either cfg or config keywords, not both (got cfg and "
                            f"{sorted(overrides)})")
    if cfg is None:
        return Config(**overrides)
    if isinstance(cfg, Config):
        return Config(**{**cfg.to_dict(), **overrides}) if overrides else cfg
    if allow_dict and isinstance(cfg, Mapping):
        return Config(**{**dict(cfg), **overrides})
    allowed = "a memscale.Config, a dict of its keys or None" if allow_dict else "a memscale.Config or None"
    raise TypeError(f"cfg: expected {allowed}; got {type(cfg).__name__}")
