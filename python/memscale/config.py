"""``memscale.Config``: keyword arguments in, one strict C++ validator behind."""
from __future__ import annotations

import json
import os
from typing import Any

from . import _C


def _jsonable(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"Config value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def config_schema() -> dict[str, Any]:
    """The Config schema: JSON Schema (draft 2020-12) of every Config key, with its type,
    default, allowed values, the offload policies it applies to (``x-policies``) and a
    one-line ``description``. The C++ parser takes its keys and defaults from it, and
    docs/config.md is generated from it (``python -m memscale docs config``).

    Example:
        >>> import memscale
        >>> schema = memscale.config_schema()
        >>> schema["properties"]["safety_margin"]["default"]
        0.1
        >>> schema["properties"]["offload"]["properties"]["pin_last_n_layers"]["x-policies"]
        ['pinned_hot_set']
    """
    return json.loads(_C.config_schema_json())


class Config:
    """Immutable MemScale configuration. Keyword arguments are the JSON keys of
    docs/config.md; invalid input raises :class:`memscale.ConfigError` naming the key.

    Example:
        >>> import memscale
        >>> cfg = memscale.Config(memory_budget="4GiB", techniques={"checkpoint": "on"})
        >>> cfg.memory_budget
        4294967296
        >>> memscale.Config.from_json(cfg.to_json()) == cfg
        True
    """

    __slots__ = ("_cpp", "_data")

    def __init__(self, **kwargs: Any) -> None:
        cpp = _C.Config.from_json(json.dumps(kwargs, default=_jsonable))
        object.__setattr__(self, "_cpp", cpp)
        object.__setattr__(self, "_data", json.loads(cpp.to_json()))

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike) -> "Config":
        """Build from JSON text or from the path of a JSON file."""
        cpp = _C.Config.from_json(os.fspath(text_or_path))
        return cls(**json.loads(cpp.to_json()))

    def to_json(self) -> str:
        """Every key, defaults included, sorted: the same Config gives the same text."""
        return self._cpp.to_json()

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self._cpp.to_json())

    def resolve_budget(self, device_bytes: int) -> int:
        """The budget in bytes for a device with ``device_bytes`` of memory."""
        return self._cpp.resolve_budget(int(device_bytes))

    @property
    def cpp(self) -> Any:
        """The validated C++ object the engine consumes."""
        return self._cpp

    def __getattr__(self, name: str) -> Any:
        data = object.__getattribute__(self, "_data")
        if name in data:
            return json.loads(json.dumps(data[name]))  # a copy: the Config stays immutable
        raise AttributeError(f"Config has no field {name!r}; fields: {', '.join(sorted(data))}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Config is immutable; build a new one: memscale.Config(**{**cfg.to_dict(), ...})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self._cpp == other._cpp

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __repr__(self) -> str:
        defaults = json.loads(_C.Config.from_json("{}").to_json())
        changed = {k: v for k, v in self._data.items() if defaults.get(k) != v}
        body = ", ".join(f"{k}={v!r}" for k, v in sorted(changed.items()))
        return f"Config({body})"
