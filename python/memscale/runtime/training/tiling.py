"""Sequence-chunked computation of position-wise layers (MLPs).

A tiled layer's forward is run on ``chunks`` slices of its input along the sequence
axis (dim ``-2`` of a ``(..., seq, hidden)`` input; for a 2-D ``(tokens, hidden)``
input that is the token axis), each slice under non-reentrant checkpointing, and the
slice outputs are concatenated. Only one slice's intermediates (e.g. the 4×hidden MLP
activations) exist at a time in forward, and again in backward, where each slice is
recomputed just before its gradient is needed. Outputs and gradients equal the
untiled layer's (up to float summation order of the weight gradients).

Limits (checked, with a clear error):

* the layer must be position-wise. Modules that mix positions or batch entries
  (``POSITION_MIXING_TYPES``: convolutions, batch/group norms, recurrent cells,
  attention, pooling) are refused from the module tree; then a probe runs the
  layer once on a small random input, whole and in slices, and refuses it if the
  results differ — this catches functional code (attention written with matmuls) that
  the tree cannot show. The plan's ``kind`` must also say ``mlp``.
* the forward must take exactly one tensor (extra non-tensor arguments are passed
  through) and return one tensor whose sequence axis matches the input's.
* dropout inside a tiled layer draws its random mask per slice, so the mask (not its
  distribution) differs from the untiled layer's; with dropout disabled, or in eval,
  results match exactly.

Example:
    >>> import torch
    >>> from memscale.runtime.training.tiling import tile_module
    >>> mlp = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    >>> x = torch.randn(2, 16, 8)
    >>> ref = mlp(x)
    >>> patch = tile_module(mlp, chunks=4)
    >>> torch.allclose(mlp(x), ref)
    True
    >>> patch.remove()
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as _torch_checkpoint

from memscale.errors import ExecutorError
from memscale.runtime.hooks import ForwardPatch

#: Module types that combine several positions (or batch entries): never tiled.
POSITION_MIXING_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LocalResponseNorm,
    nn.RNNBase, nn.RNNCellBase, nn.MultiheadAttention, nn.Transformer,
    nn.TransformerEncoderLayer, nn.TransformerDecoderLayer,
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd, nn.Upsample,
)

#: Probe geometry: (batch, positions) of the random input; compared in this many slices.
_PROBE_SHAPE = (2, 6)
_PROBE_SLICES = 3


def _probe_width(module: nn.Module) -> int | None:
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            return sub.in_features
        if isinstance(sub, (nn.LayerNorm, nn.RMSNorm)) and sub.normalized_shape:
            return int(sub.normalized_shape[-1])
    return None


def _probe(module: nn.Module, name: str) -> None:
    """Run the module once on a random input, whole and in slices; refuse if they differ.

    Functional code in a custom forward (attention written with matmuls, cumulative
    ops) cannot be seen from the module tree; this check sees it. It runs in eval mode
    (dropout off), under no_grad, with the RNG state forked, and restores every
    submodule's training flag, so the model is left exactly as it was.
    """
    width = _probe_width(module)
    ref = next(module.parameters(), None)
    if width is None or ref is None or ref.device.type == "meta":
        raise ExecutorError(f"layer {name!r}: cannot verify that it is position-wise (no Linear "
                            "or norm to infer its input width from, or parameters on meta); "
                            "tiling is refused for it")
    modes = [(m, m.training) for m in module.modules()]
    devices = [ref.device.index or 0] if ref.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            module.eval()
            gen = torch.Generator(device="cpu").manual_seed(0)
            x = torch.randn(*_PROBE_SHAPE, width, generator=gen).to(device=ref.device, dtype=ref.dtype)
            try:
                whole = module(x)
                parts = torch.cat([module(p) for p in torch.tensor_split(x, _PROBE_SLICES, dim=1)], 1)
            except Exception as exc:  # the module's own error, reported with context
                raise ExecutorError(f"layer {name!r}: cannot verify that it is position-wise: its "
                                    f"forward failed on a ({', '.join(map(str, x.shape))}) input "
                                    f"({type(exc).__name__}: {exc}); tiling is refused for it") from exc
    finally:
        for m, mode in modes:
            m.training = mode
    if not isinstance(whole, torch.Tensor) or whole.shape != parts.shape or not torch.allclose(
            whole.float(), parts.float(), rtol=1e-3, atol=1e-4):
        raise ExecutorError(f"layer {name!r}: cannot tile, its output at one position depends on "
                            "other positions (checked on a random input); tiling takes only "
                            "position-wise layers (MLPs)")


def tiling_refusal(module: nn.Module, name: str) -> str | None:
    """Why :func:`check_tileable` refuses ``module`` (None: it can be tiled). The profiler
    records this as the layer's capability, so the engine never plans a tiling this
    runtime refuses. On the meta device (nothing to run) only the module tree is checked;
    the probe runs when the plan is applied to real parameters."""
    try:
        ref = next(module.parameters(), None)
        check_tileable(module, name, probe=ref is None or ref.device.type != "meta")
    except ExecutorError as exc:
        return str(exc)
    return None


def check_tileable(module: nn.Module, name: str, probe: bool = True) -> None:
    """Raise ExecutorError unless ``module`` is position-wise (see module docstring)."""
    for sub_name, sub in module.named_modules():
        if isinstance(sub, POSITION_MIXING_TYPES):
            where = f"{name}.{sub_name}" if sub_name and name else (sub_name or name)
            raise ExecutorError(
                f"layer {name!r}: cannot tile, submodule {where!r} is a {type(sub).__name__}, "
                "which may mix sequence positions or batch entries; tiling takes only "
                "position-wise layers (MLPs)")
        if isinstance(sub, nn.GLU) and sub.dim != -1:
            raise ExecutorError(f"layer {name!r}: cannot tile, GLU {sub_name or name!r} splits "
                                f"dim={sub.dim}; only dim=-1 (the feature axis) is position-wise")
    if probe:
        _probe(module, name)


def _seq_dim(x: torch.Tensor) -> int:
    return x.dim() - 2


def tiled(forward: Callable[..., Any], chunks: int, name: str = "") -> Callable[..., Any]:
    """Return ``forward`` computed in ``chunks`` checkpointed slices along the sequence axis."""
    if chunks < 1:
        raise ExecutorError(f"layer {name!r}: tile_chunks={chunks}; expected an int >= 1")

    def run(*args: Any, **kwargs: Any) -> Any:
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if len(tensors) != 1 or not args or not isinstance(args[0], torch.Tensor):
            raise ExecutorError(
                f"layer {name!r}: tiling needs forward(x, ...) with exactly one tensor "
                f"argument, given first; got {len(tensors)} tensor argument(s)")
        x = args[0]
        if x.dim() < 2:
            raise ExecutorError(f"layer {name!r}: tiling needs an input of at least 2 dims "
                                f"(..., seq, hidden); got shape {tuple(x.shape)}")
        dim = _seq_dim(x)
        n = min(chunks, x.size(dim))
        if n <= 1 or not torch.is_grad_enabled():
            # Without autograd there is nothing to save: slices would only add copies.
            return forward(*args, **kwargs) if n <= 1 else _chunked_no_grad(forward, x, dim, n, args, kwargs)
        rest = args[1:]
        parts = [
            _torch_checkpoint(lambda piece: forward(piece, *rest, **kwargs), piece,
                              use_reentrant=False, preserve_rng_state=True)
            for piece in torch.tensor_split(x, n, dim=dim)
        ]
        _check_parts(parts, x, dim, name)
        return torch.cat(parts, dim=dim)
    return run


def _chunked_no_grad(forward: Callable[..., Any], x: torch.Tensor, dim: int, n: int,
                     args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    # Inference: the slices bound the intermediate workspace just the same.
    parts = [forward(piece, *args[1:], **kwargs) for piece in torch.tensor_split(x, n, dim=dim)]
    return torch.cat(parts, dim=dim)


def _check_parts(parts: list[Any], x: torch.Tensor, dim: int, name: str) -> None:
    for p in parts:
        if not isinstance(p, torch.Tensor) or p.dim() != x.dim():
            raise ExecutorError(
                f"layer {name!r}: tiling needs forward to return one tensor with the input's "
                f"{x.dim()} dims; got {type(p).__name__}"
                + (f" with shape {tuple(p.shape)}" if isinstance(p, torch.Tensor) else ""))


def tile_module(module: nn.Module, chunks: int, name: str = "") -> ForwardPatch:
    """Tile ``module`` on its own (after ``check_tileable``); ``.remove()`` restores it."""
    check_tileable(module, name)
    return ForwardPatch(module, lambda fwd: tiled(fwd, chunks, name), name=name)
