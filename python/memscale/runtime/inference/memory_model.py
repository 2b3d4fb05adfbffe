"""Memory of one generation batch: resident weights + KV cache + activation reservation.

The activation reservation is the engine's activation-reservation formula, widest per-token buffer
(max(hidden, intermediate)) x tokens of the step x dtype bytes x safety factor, with the
safety factor *calibrated* by the engine (``memscale.calibrate_reservation``) on probe
generations measured with ``memscale.track_memory`` (their peak less the KV cache they
allocated). The fitted factor covers every probe; ``headroom`` adds a margin for shapes
the probes did not see.

Example:
    >>> from memscale.testing.models import gpt
    >>> from memscale.runtime.inference.memory_model import calibrate
    >>> mm = calibrate(gpt.build(n_layers=2).eval())
    >>> p = mm.predict(batch=4, prompt=16, new=8)
    >>> p["total"] == p["weights"] + p["kv_cache"] + p["activations"]
    True
"""
from __future__ import annotations

import gc
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError
from ...memory import track_memory
from ...planning import calibrate_reservation
from ...profiler.introspect import ModelDims, model_dims
from ...profiler.storage import storage_bytes
from .pager import handle_of


@dataclass(frozen=True)
class ModelMemory:
    """Calibrated memory figures of one model (bytes)."""

    weight_bytes: int          # resident weights: all of them, or the pager's budget + unpaged
    kv_bytes_per_token: int    # K and V of every layer for one token of one sequence
    widest_buffer: int         # reservation: max(hidden, intermediate)
    dtype_bytes: int
    safety_factor: float       # fitted by the engine to the measured probes
    headroom: float = 1.1

    def activation_bytes(self, batch: int, prompt: int) -> int:
        """Reservation for a step of ``batch`` x ``prompt`` tokens (the prefill: the largest step)."""
        return math.ceil(self.widest_buffer * batch * prompt * self.dtype_bytes * self.safety_factor * self.headroom)

    def predict(self, batch: int, prompt: int, new: int) -> dict[str, int]:
        """Predicted peak of generating ``new`` tokens for ``batch`` prompts of ``prompt`` tokens."""
        kv = batch * (prompt + new) * self.kv_bytes_per_token
        act = self.activation_bytes(batch, prompt)
        return {"weights": self.weight_bytes, "kv_cache": kv, "activations": act,
                "total": self.weight_bytes + kv + act}


def _dims(model: nn.Module) -> ModelDims:
    """The model's dims as the profiler reads them (:func:`memscale.profiler.introspect.model_dims`)."""
    dims = model_dims(model)
    if not (dims.layers and dims.hidden and dims.vocab):
        raise ConfigError(f"model: cannot read layers / width / vocab from {type(model).__name__}.config "
                          "(num_hidden_layers / hidden_size / vocab_size or their aliases)")
    return dims


def widest_buffer(model: nn.Module) -> int:
    """max(hidden, intermediate): the reservation's per-token buffer (4 x hidden when the
    model declares no inner width and none can be read from its weights)."""
    dims = _dims(model)
    return max(dims.hidden, dims.intermediate or 4 * dims.hidden)


def kv_bytes_per_token(model: nn.Module) -> int:
    """K and V of all layers for one token: 2 x layers x kv heads x head width x element size."""
    dims = _dims(model)
    width = dims.kv_width or dims.hidden
    itemsize = next(model.parameters()).element_size()
    return 2 * dims.layers * width * itemsize


def resident_weight_bytes(model: nn.Module) -> int:
    """Weights resident while the model runs: the pager's budget plus what it does not
    page when the model is wrapped for offloaded inference, else every parameter and buffer."""
    handle = handle_of(model)
    if handle is not None:
        return int(handle.pager.budget_bytes) + int(handle.unpaged_bytes)
    return storage_bytes([*model.parameters(), *model.buffers()])


def _probe(model: nn.Module, batch: int, prompt: int, new: int) -> int:
    """Measured activation peak of one generation: tracked peak minus its KV cache and
    minus any weights the pager loaded beyond what was resident when it began."""
    from .generate import generate

    vocab = _dims(model).vocab
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab, (batch, prompt), generator=torch.Generator().manual_seed(batch * 1000 + prompt))
    ids = ids.to(device)
    handle = handle_of(model)
    gc.collect()
    if handle is not None:
        handle.pager.wait_idle()
        start_weights = handle.pager.stats().physical_bytes
        handle.reset_stats()
    with track_memory(device) as t:
        generate(model, ids, new)
    paged = max(0, handle.pager.stats().peak_physical_bytes - start_weights) if handle is not None else 0
    kv = batch * (prompt + new) * kv_bytes_per_token(model)
    return max(0, t.peak_bytes - kv - paged)


def fit_reservation(model: nn.Module, probes: tuple[tuple[int, int], ...] = ((1, 8), (4, 32), (8, 16)),
                    new_tokens: int = 2) -> Any:
    """The engine's Calibration (``memscale.calibrate_reservation``) of the inference
    activation reservation, fitted to generations of ``probes`` (batch, prompt) measured on ``model``."""
    if not probes:
        raise ConfigError("probes: give at least one (batch, prompt) pair")
    max_seq = model_dims(model).max_positions
    longest = max(p for _, p in probes)
    if max_seq and longest + new_tokens > max_seq:
        raise ConfigError(f"probes: prompt {longest} + {new_tokens} exceeds the model's max_seq {max_seq}")
    _probe(model, *probes[0], new_tokens)  # warm-up: thread pools and allocator caches
    widest = widest_buffer(model)
    dtype_bytes = next(model.parameters()).element_size()
    samples = [(widest, b * p, dtype_bytes, max(1, _probe(model, b, p, new_tokens))) for b, p in probes]
    return calibrate_reservation(samples)


def calibrate(model: nn.Module, probes: tuple[tuple[int, int], ...] = ((1, 8), (4, 32), (8, 16)),
              new_tokens: int = 2, headroom: float = 1.1) -> ModelMemory:
    """Memory figures of ``model`` with the reservation's safety factor fitted to probes."""
    fitted = fit_reservation(model, probes, new_tokens)
    return ModelMemory(resident_weight_bytes(model), kv_bytes_per_token(model), widest_buffer(model),
                       next(model.parameters()).element_size(), fitted.safety_factor, headroom)


def describe(mm: ModelMemory) -> dict[str, Any]:
    return {"weight_bytes": mm.weight_bytes, "kv_bytes_per_token": mm.kv_bytes_per_token,
            "widest_buffer": mm.widest_buffer, "dtype_bytes": mm.dtype_bytes,
            "safety_factor": mm.safety_factor, "headroom": mm.headroom}
