"""Live-bytes accounting of tensors created under a TorchDispatchMode.

Every op's output storages are registered once (keyed by the StorageImpl address) and a
``weakref.finalize`` on the storage's Python object removes them when the storage dies
(torch preserves a storage's Python object while the C++ storage lives, so the finalizer
fires exactly at the free). Works for real tensors and for FakeTensors alike, which is
what lets the profiler compute peaks without allocating anything.
"""
from __future__ import annotations

import logging
import weakref
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_leaves, tree_map

from .. import _C
from .storage import storage_key, storage_nbytes

log = logging.getLogger("memscale")

OpCallback = Callable[[Any, tuple, dict, Any], None]

aten = torch.ops.aten

# Ops whose fake kernels cannot show what the real kernel allocates: oneDNN's fused RNN
# returns a workspace whose size the library computes at run time (the meta kernel returns
# a placeholder), and its forward and backward allocate scratch inside the kernel that no
# output shows. For these the real kernel is run once per distinct input geometry on zero
# CPU tensors of the fake inputs' layouts (storages at their probed real sizes) under the
# counting allocator, to learn the true output sizes and the kernel's peak; the probe's
# memory is freed immediately.
_REAL_SIZE_PROBES = {op.default for op in (getattr(aten, name, None) for name in
                                           ("mkldnn_rnn_layer", "mkldnn_rnn_layer_backward")) if op is not None}
# A probe is skipped (and the estimate logged as a lower bound) past this many input bytes.
PROBE_LIMIT_BYTES = 256 << 20


def _grouped_mm_any_dtype(func: Any, args: tuple, kwargs: dict) -> Any:
    """``aten._grouped_mm`` on fake CPU tensors of any float dtype.

    Its meta kernel repeats the CUDA kernel's checks (bfloat16 only), while the CPU kernel
    multiplies float32 too: a float32 mixture of experts (transformers' grouped-mm experts)
    runs for real but not on fake tensors. Shapes do not depend on the dtype, so the meta
    kernel runs on bfloat16 stand-ins and the output takes the real kernel's dtype (the
    inputs'; ``out_dtype`` when given). The stand-ins are made below this mode: untracked.
    """
    def as_bf16(a: Any) -> Any:
        return a.to(torch.bfloat16) if isinstance(a, torch.Tensor) and a.is_floating_point() else a

    mat_a = args[0]
    out_dtype = kwargs.get("out_dtype") or (args[4] if len(args) > 4 and args[4] is not None else mat_a.dtype)
    bargs = tuple(as_bf16(a) for a in args[:4]) + tuple(args[4:5] and (None,))
    bkwargs = {k: (None if k == "out_dtype" else as_bf16(v)) for k, v in kwargs.items()}
    return func(*bargs, **bkwargs).to(out_dtype)


# Ops whose meta kernel refuses inputs the device's real kernel accepts: a replacement that
# computes the same output metadata (see each function).
_FAKE_OVERRIDES: dict[Any, Callable[[Any, tuple, dict], Any]] = {}
if hasattr(aten, "_grouped_mm"):
    _FAKE_OVERRIDES[aten._grouped_mm.default] = _grouped_mm_any_dtype


class LiveTracker(TorchDispatchMode):
    """Tracks live storage bytes of op outputs and calls ``on_op`` after every op.

    Attributes:
        live: bytes of tracked storages currently alive.
    """

    def __init__(self, on_op: OpCallback | None = None, fake: bool = False,
                 resident: set[int] | None = None) -> None:
        super().__init__()
        self.live = 0
        # storages allocated before the run (parameters, buffers, inputs): an op returning a
        # view of one (``weight.t()`` in every Linear) allocates nothing
        self._resident = resident or set()
        self._sizes: dict[int, int] = {}
        self._finalizers: list[weakref.finalize] = []
        self._on_op = on_op
        self.on_new: Callable[[int], None] | None = None  # called with each newly tracked storage's key
        self._fake = fake
        self._probe_cache: dict[tuple, list[int]] = {}
        # storage key -> bytes the real kernel would allocate (see _REAL_SIZE_PROBES)
        self._size_override: dict[int, int] = {}
        # live bytes at the peak inside the op that just ran, where a probe measured it
        # (the kernel's own scratch is freed before it returns): None for other ops
        self.op_peak: int | None = None

    def nbytes(self, t: torch.Tensor) -> int:
        """Bytes of ``t``'s storage, corrected by a real-size probe where one ran."""
        return self._size_override.get(storage_key(t), storage_nbytes(t))

    def track(self, t: torch.Tensor) -> None:
        """Count ``t``'s storage as live until it is freed (idempotent per storage)."""
        st = t.untyped_storage()
        key = storage_key(t)
        if key in self._sizes or key in self._resident:
            return
        n = self._size_override.get(key, st.nbytes())
        self._sizes[key] = n
        self.live += n
        self._finalizers.append(weakref.finalize(st, self._release, key))
        if self.on_new is not None:
            self.on_new(key)

    def _release(self, key: int) -> None:
        n = self._sizes.pop(key, 0)
        self._size_override.pop(key, None)
        self.live -= n

    def close(self) -> None:
        """Detach all finalizers (the tracker's figures are final once the run is over)."""
        for f in self._finalizers:
            f.detach()
        self._finalizers.clear()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        override = _FAKE_OVERRIDES.get(func) if self._fake else None
        if override is not None and args and getattr(args[0], "device", None) == torch.device("cpu") and any(
                isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.bfloat16
                for t in tree_leaves((args, kwargs))):  # on CUDA the real kernel refuses them too
            out = override(func, args, kwargs)
        else:
            out = func(*args, **kwargs)
        live_before = self.live
        kernel_peak = self._probe(func, args, kwargs, out) if self._fake and func in _REAL_SIZE_PROBES else None
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.track(t)
        self.op_peak = live_before + kernel_peak if kernel_peak is not None else None
        if self._on_op is not None:
            self._on_op(func, args, kwargs, out)
        self.op_peak = None
        return out

    def _real_like(self, t: torch.Tensor) -> torch.Tensor:
        """A zero CPU tensor of ``t``'s layout on a storage of its real size (a probed one)."""
        n = self.nbytes(t) // t.element_size()
        return torch.zeros(n, dtype=t.dtype, device="cpu").as_strided(t.shape, t.stride(), t.storage_offset())

    def _probe(self, func: Any, args: tuple, kwargs: dict, out: Any) -> int | None:
        """Run the real kernel once per geometry: record its outputs' real storage sizes
        (where larger than the fake ones) and return the bytes it allocated at its peak
        (outputs included), or None where it was not probed."""
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if any(t.device.type != "cpu" for t in tensors):
            return None
        sig = (func, tuple((tuple(t.shape), t.stride(), t.dtype, self.nbytes(t)) for t in tensors),
               repr([a for a in tree_leaves((args, kwargs)) if not isinstance(a, torch.Tensor)]))
        probed = self._probe_cache.get(sig)
        if probed is None:
            in_bytes = sum(self.nbytes(t) for t in tensors)
            if in_bytes > PROBE_LIMIT_BYTES:
                log.warning("%s inputs are %d bytes (> %d): workspace size not probed, "
                            "the activation estimate of this op is a lower bound", func, in_bytes, PROBE_LIMIT_BYTES)
                return None
            # grad mode stays as it is: oneDNN only returns a workspace when grad is enabled
            with _disable_current_modes():
                real_args, real_kwargs = tree_map(
                    lambda a: self._real_like(a) if isinstance(a, torch.Tensor) else a, (args, kwargs))
                session = _C.CountingSession()
                real_out = func(*real_args, **real_kwargs)
                peak = session.stats().peak_bytes
                sizes = [t.untyped_storage().nbytes() if isinstance(t, torch.Tensor) else 0
                         for t in tree_leaves(real_out)]
                del real_out, session, real_args, real_kwargs
            probed = (sizes, peak)
            self._probe_cache[sig] = probed
            log.debug("probed %s: real output sizes %s, kernel peak %d bytes", func, sizes, peak)
        sizes, peak = probed
        for t, n in zip(tree_leaves(out), sizes):
            if isinstance(t, torch.Tensor) and n > storage_nbytes(t):
                self._size_override[storage_key(t)] = n
        return peak
