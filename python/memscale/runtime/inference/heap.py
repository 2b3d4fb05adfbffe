"""Give the memory a wrap frees back to the operating system.

``wrap_for_inference`` frees the resident copy of every paged weight. glibc keeps freed
heap chunks in the process (their pages stay in the resident set) and returns them only on
``malloc_trim``: without it the process's resident set after wrapping HF Llama at 0.4x of
its weights stayed at the full model's size, 3x the budget, while the counted tensors were
0.38x. Elsewhere (musl, macOS) there is nothing to call and nothing is done.
"""
from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("memscale")

_trim = None
try:
    _trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
except OSError:  # no C library to open: nothing to trim
    _trim = None
if _trim is not None:
    _trim.argtypes = [ctypes.c_size_t]
    _trim.restype = ctypes.c_int


def release_freed_memory() -> bool:
    """``malloc_trim(0)``: every arena's free pages go back to the OS. True when glibc did
    release something, False when it had nothing to give back or is not the C library."""
    if _trim is None:
        return False
    released = bool(_trim(0))
    log.debug("malloc_trim: %s", "released free heap pages" if released else "nothing to release")
    return released
