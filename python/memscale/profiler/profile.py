"""``memscale.profile``: turn any ``nn.Module`` plus example inputs into a ModelGraph.

What the per-layer figures mean (the engine's memory model relies on exactly this):

* Layers: repeated composite blocks of a ``ModuleList``/``Sequential``, and every other
  child of the root or of a container holding blocks (embeddings, norms, the head...),
  in execution order; layers that never ran follow in definition order.
* Ops run between layers ("glue": a loss after the head, ``x + pos_embed`` after a patch
  embedding) belong to the layer that ran before them; ops before the first layer to the
  first layer. Parameters owned by no layer (e.g. a root's ``cls_token``) go to the layer
  whose span first uses them.
* ``activation_bytes``: storages saved for backward by ops in the layer's forward span,
  deduplicated by storage, excluding parameters, buffers and the example inputs (those
  are counted in ``param_bytes``/``buffer_bytes``/graph ``input_bytes``) and the retained
  storages.
* ``retained_bytes`` (training): storages the layer's forward span allocated that are still
  reachable at the end of the forward from the non-tensor state the layers were called
  with (a Hugging Face ``Cache``) or, with the loss outside the model, from its output:
  they stay until backward ends whatever the plan (profiler/retained.py).
* ``grad_bytes``: gradients of the trainable parameters whose gradient the layer's
  backward makes (a parameter shared by layers: at the last of them in execution order).
* ``transient_bytes`` = max(forward scratch, backward scratch). Forward scratch = peak
  live bytes in the forward span - live bytes at entry - the span's saved bytes - its
  retained bytes no op saved (>= 0); it includes the layer's output. Backward scratch = peak live bytes in the backward span
  - live bytes when it starts (when the gradient of the layer's output is ready; for the
  layer the forward ended in, when backward starts plus its output-sized gradient, which
  the loss's backward makes and the engine charges as its incoming gradient, so a loss's
  backward is in the head's figure once); it includes the parameter gradients the layer
  creates and the gradient it passes on.
* ``measured_peak_bytes`` (``measure=True``): bytes resident when the measured step began
  (parameters, buffers, optimizer state, inputs) + the counting allocator's peak during
  the layer's spans; ``measured_activation_bytes``: saved bytes as above, on the real step.
* ``kv_cache_bytes`` (inference only): 2 x batch x seq x K/V width x dtype bytes for each
  attention module (``nn.MultiheadAttention`` or a module with ``num_heads``/``n_heads``/
  ``num_attention_heads``; ``num_key_value_heads`` and ``head_dim``/``d_kv`` honoured).
* Training steps run forward -> loss -> backward: the model's own scalar loss when its
  output holds one, else a cross-entropy of its first output (the loss outside the model);
  forward and loss run under the autocast active at the call, or ``autocast=dtype``, so
  activations are counted in the dtypes the step really saves.
* Frozen parameters (``requires_grad=False``: a LoRA adapter's base, a frozen backbone) have
  no gradient and no optimizer state; only trainable ones count in ``grad_bytes`` and
  ``optimizer_bytes``.
* ``tileable``: ``seq``/``batch`` only for position-wise MLPs and heads (Linear,
  pointwise activations, dropout, LayerNorm/RMSNorm); never for blocks with attention,
  BatchNorm or recurrence.

Example:
    >>> from memscale.testing import models
    >>> from memscale.profiler.profile import profile_dict
    >>> model = models.build("gpt", n_layers=2)
    >>> graph = profile_dict(model, models.example_inputs("gpt", model, batch=2, seq=16))
    >>> [layer["kind"] for layer in graph["layers"]][:3]
    ['embedding', 'embedding', 'block']
"""
from __future__ import annotations

import json
import logging
from typing import Any

import torch
from torch import nn

from .discovery import discover_layers
from .distributed import fsdp_hooks_held, per_rank_graph, read_setting
from .. import _C
from ..errors import MemScaleError
from .estimate import estimate_step, target_device
from .graph import build_graph
from .optimizer import optimizer_spec

log = logging.getLogger("memscale")


def _split_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    """A tensor, a tuple/list of positional arguments, or a dict of keyword arguments."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    if isinstance(example_inputs, dict):
        if not all(isinstance(k, str) for k in example_inputs):
            raise TypeError("example_inputs as a dict must have str keys (keyword arguments of forward)")
        return (), dict(example_inputs)
    raise TypeError(f"example_inputs must be a Tensor, a tuple/list of positional arguments or a dict "
                    f"of keyword arguments, got {type(example_inputs).__name__}")


AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)


def resolve_autocast(device_type: str, autocast: Any) -> torch.dtype | None:
    """The autocast dtype the profiled step runs under: ``autocast`` when given, else the one
    active at the call for ``device_type`` (None: no autocast)."""
    if autocast is not None:
        if autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast must be None, torch.bfloat16 or torch.float16, got {autocast!r}")
        return autocast
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _check_args(model: Any, training: Any, optimizer: Any, measure: Any, mixed_precision: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, value in (("training", training), ("measure", measure), ("mixed_precision", mixed_precision)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {value!r}")
    optimizer_spec(optimizer)  # refuses an unknown optimizer, naming the allowed ones


def profile_dict(model: nn.Module, example_inputs: Any, training: bool = True, optimizer: Any = "adamw",
                 measure: bool = False, mixed_precision: bool = False,
                 autocast: torch.dtype | None = None, *, loss_fn: Any = None) -> dict[str, Any]:
    """Profile ``model`` on ``example_inputs``; return the ModelGraph as a plain dict.

    Args:
        model: any module; it is not modified (parameters, buffers, grads, hooks and
            train/eval flags are as before). A model built on the meta device works.
        example_inputs: a Tensor, a tuple/list of positional args, or a dict of kwargs.
        training: profile a training step (forward + backward) or inference (forward).
        optimizer: ``none``, ``sgd``, ``sgd_momentum``, ``adam`` or ``adamw``, or the
            ``torch.optim.Adam`` / ``AdamW`` / ``SGD`` the loop steps with (then its
            ``foreach`` / ``fused`` flags size the step's temporaries; a name: torch's
            default for the device).
        measure: also run one real step and fill ``measured_peak_bytes`` and
            ``measured_activation_bytes`` (needs real, non-meta parameters).
        mixed_precision: fp32 master weights are kept beside the parameters.
        autocast: run forward and loss under ``torch.autocast(device_type, autocast)``
            (``torch.bfloat16`` or ``torch.float16``); None: under the autocast active at
            the call, if any.
        loss_fn: the caller computes the loss outside forward (``wrap(..., loss_fn=...)``);
            recorded in the layers' capabilities (``cannot``: no head + loss fusion). A step
            whose output is not a scalar loss is profiled as forward -> a cross-entropy of
            the output -> backward (docs/memory-model.md, "The loss of the step").

    Each training layer records ``cannot``: the techniques the training runtime cannot
    apply to it in this model and call convention, with the reason
    (:mod:`memscale.runtime.training.capabilities`).
    """
    _check_args(model, training, optimizer, measure, mixed_precision)
    setting = read_setting(model)
    if setting.active:  # one rank of DDP / FSDP2: profile the local step, then per-rank figures
        if measure:
            raise MemScaleError("profile: measure=True is not supported under torch.distributed (the measured step "
                                "would run the collectives); profile with measure=False")
        with fsdp_hooks_held(setting):
            graph = _profile_local(setting.module, example_inputs, training, optimizer, False, mixed_precision,
                                   autocast, loss_fn)
        return per_rank_graph(graph, setting, setting.module, training)
    return _profile_local(model, example_inputs, training, optimizer, measure, mixed_precision, autocast, loss_fn)


def _profile_local(model: nn.Module, example_inputs: Any, training: bool, optimizer: Any, measure: bool,
                   mixed_precision: bool, autocast: torch.dtype | None, loss_fn: Any) -> dict[str, Any]:
    """The step of this process as profile_dict documents it."""
    optimizer, optimizer_impl = optimizer_spec(optimizer)
    args, kwargs = _split_inputs(example_inputs)
    autocast = resolve_autocast(target_device(model, (args, kwargs)).type, autocast)
    specs = discover_layers(model)
    in_layers = {id(t) for s in specs for t in list(s.module.parameters()) + list(s.module.buffers())}
    orphans = [t for t in list(model.parameters()) + list(model.buffers()) if id(t) not in in_layers]
    est = estimate_step(model, args, kwargs, specs, orphans, training, autocast)
    measured = None
    if measure:
        from .measure import measure_step  # imported lazily: needs the counting allocator
        measured = measure_step(model, args, kwargs, specs, training, optimizer, autocast, optimizer_impl)
    # What the training runtime can apply is the runtime's to say (lazy: it imports the profiler).
    from ..runtime.training.capabilities import capabilities_of

    cannot = capabilities_of(model, args, kwargs, training=training, loss_outside=loss_fn is not None)
    graph = build_graph(model, (args, kwargs), specs, est.records, est.orphan_first_use, training=training,
                        optimizer=optimizer, optimizer_impl=optimizer_impl, mixed_precision=mixed_precision,
                        measured=measured, cannot=cannot)
    log.info("profiled %s: %d layers, %d activation bytes", graph["model_name"],
             len(graph["layers"]), sum(layer["activation_bytes"] for layer in graph["layers"]))
    return graph


def profile(model: nn.Module, example_inputs: Any, training: bool = True, optimizer: Any = "adamw",
            measure: bool = False, mixed_precision: bool = False, autocast: torch.dtype | None = None, *,
            loss_fn: Any = None) -> Any:
    """Profile ``model``; return a ``memscale.ModelGraph`` (same arguments as :func:`profile_dict`)."""
    graph = profile_dict(model, example_inputs, training=training, optimizer=optimizer,
                         measure=measure, mixed_precision=mixed_precision, autocast=autocast, loss_fn=loss_fn)
    return _C.ModelGraph.from_json(json.dumps(graph, sort_keys=True))
