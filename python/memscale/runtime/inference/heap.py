"""Give the memory a wrap frees back to the operating system, and keep it given back.

``wrap_for_inference`` frees the resident copy of every paged weight (on the CPU). With
glibc two things then keep freed memory in the process's resident set:

* freed heap chunks stay until ``malloc_trim``: without it the resident set after wrapping
  HF Llama at 0.4x of its weights stayed at the full model's size, 3x the budget, while
  the counted tensors were 0.38x;
* freeing those large blocks raises glibc's dynamic mmap threshold to the largest of them
  (up to 32 MiB), so from then on every tensor below that size (activations, logits, the
  KV cache's growing rows) comes from the heap and stays resident once freed. Pinning the
  threshold at glibc's initial 128 KiB (``pin_mmap_threshold``) stops new heap growth, but
  the heap still holds the freed weights' space (trimmed, not resident) and a step's
  tensors fault it back in; the wrap therefore also trims after every forward. HF GPT-2 at
  0.25x: 52 MiB above its counted tensor peak before, 39 MiB after (21 MiB unwrapped; 13
  MiB with ``MALLOC_MMAP_THRESHOLD_=131072`` from process start, so the weights never
  were in the heap).

Elsewhere (musl, macOS) there is nothing to call and nothing is done.
"""
from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger("memscale")

#: glibc's initial mmap threshold (DEFAULT_MMAP_THRESHOLD_MIN) and mallopt's parameter number.
INITIAL_MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3

try:
    _libc = ctypes.CDLL(None)
except OSError:  # no C library to open: nothing to trim
    _libc = None
_trim = getattr(_libc, "malloc_trim", None)
_mallopt = getattr(_libc, "mallopt", None) if _trim is not None else None  # glibc: both exist
if _trim is not None:
    _trim.argtypes = [ctypes.c_size_t]
    _trim.restype = ctypes.c_int
if _mallopt is not None:
    _mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _mallopt.restype = ctypes.c_int


def release_freed_memory() -> bool:
    """``malloc_trim(0)``: every arena's free pages go back to the OS. True when glibc did
    release something, False when it had nothing to give back or is not the C library."""
    if _trim is None:
        return False
    released = bool(_trim(0))
    log.debug("malloc_trim: %s", "released free heap pages" if released else "nothing to release")
    return released


def pin_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at its initial 128 KiB (``mallopt(M_MMAP_THRESHOLD)``), so
    blocks above it are mapped and unmapped, not kept in the heap once freed. A process-wide
    setting: left alone where the user chose one (``MALLOC_MMAP_THRESHOLD_``). True when set."""
    if _mallopt is None or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    done = bool(_mallopt(_M_MMAP_THRESHOLD, INITIAL_MMAP_THRESHOLD))
    log.debug("mallopt(M_MMAP_THRESHOLD, %d): %s", INITIAL_MMAP_THRESHOLD, "set" if done else "refused")
    return done
