"""Bridge from the C++ spdlog logger to ``logging.getLogger("memscale")``."""
from __future__ import annotations

import atexit
import logging

from . import _C

logger = logging.getLogger("memscale")


def _forward(level: int, message: str) -> None:
    logger.log(level, message)


def install() -> None:
    """Route C++ messages to the ``memscale`` Python logger (Python filters by level)."""
    _C._set_log_sink(_forward)
    _C._set_log_level(logging.DEBUG)
    # The callback holds Python objects: drop it while the interpreter is still alive.
    atexit.register(_C._set_log_sink, None)
