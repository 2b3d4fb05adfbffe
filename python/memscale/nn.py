"""Memory-lean building blocks usable directly in a training script.

``linear_cross_entropy(hidden, head, targets)`` equals
``F.cross_entropy(head(hidden).flatten(0, -2), targets.flatten())`` without ever
materialising the full ``tokens × vocab`` logits: the tokens are processed in
``chunks`` slices and only one slice's logits exist at a time.

How the gradients are made (and why):

* ``reduction="mean"`` or ``"sum"`` (the training case): the gradients for ``hidden``,
  the head weight and bias are computed *in forward*, slice by slice, while the slice's
  logits are at hand, and kept until backward, which only scales them by the incoming
  gradient. This costs no extra matmul (forward logits + two gradient matmuls, exactly
  what the untiled version does) at the price of holding one ``hidden``-sized and one
  weight-sized gradient buffer from forward to backward. Recomputing in backward would
  need a fourth matmul (≈1.33× the time). Backward through the same loss twice
  (``retain_graph=True``) is refused in this mode, since the buffers are consumed.
* ``reduction="none"``: the per-token loss may be weighted arbitrarily afterwards, so
  the weight gradient cannot be formed in forward; backward recomputes each slice's
  logits instead (one extra matmul).

Logits are computed in the input dtype and reduced (log-sum-exp, softmax) in float32;
the weight gradient is accumulated in float32 and cast at the end. The loss has the
dtype of ``head(hidden)``, as ``F.cross_entropy`` would return.

Example:
    >>> import torch, torch.nn.functional as F
    >>> import memscale.nn
    >>> head = torch.nn.Linear(16, 100)
    >>> hidden = torch.randn(4, 8, 16, requires_grad=True)
    >>> targets = torch.randint(0, 100, (4, 8))
    >>> loss = memscale.nn.linear_cross_entropy(hidden, head, targets, chunks=4)
    >>> ref = F.cross_entropy(head(hidden).flatten(0, -2), targets.flatten())
    >>> torch.allclose(loss, ref)
    True
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["linear_cross_entropy", "default_chunks", "DEFAULT_CHUNK_LOGITS_BYTES",
           "CUDA_CHUNK_LOGITS_BYTES"]

#: With ``chunks=None``, slices are sized so one slice's float32 logits stay under this.
DEFAULT_CHUNK_LOGITS_BYTES = 32 << 20
#: The same on a CUDA device. Each slice costs ~15 kernel launches and their Python
#: dispatch, which a GPU runs in less time than they take to issue: larger slices keep
#: the tiled head within a few % of the untiled one's time (measured on an H100: 32 MiB
#: slices 1.24x, see benchmarks/results/) while one slice is still a small share of the
#: full logits of a large vocabulary.
CUDA_CHUNK_LOGITS_BYTES = 256 << 20


def default_chunks(tokens: int, vocab: int, device: torch.device | str) -> int:
    """Slices ``chunks=None`` uses: one slice's float32 logits stay under the device's size."""
    limit = CUDA_CHUNK_LOGITS_BYTES if torch.device(device).type == "cuda" else DEFAULT_CHUNK_LOGITS_BYTES
    return max(1, math.ceil(tokens * vocab * 4 / limit))

_REDUCTIONS = ("mean", "sum", "none")


def _slice_logits(h: torch.Tensor, t: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None, ignore_index: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One slice: (exp(logits - rowmax), computed in place in the logits buffer; its row
    sums; per-token loss; safe targets; valid mask). One slice-sized float32 array is all
    it allocates (``torch.logsumexp`` would allocate a second one)."""
    unnorm = F.linear(h, weight, bias).float()
    valid = t != ignore_index
    safe_t = torch.where(valid, t, torch.zeros_like(t))
    picked = unnorm.gather(1, safe_t.unsqueeze(1)).squeeze(1)
    top = unnorm.amax(dim=1)
    unnorm.sub_(top.unsqueeze(1)).exp_()
    total = unnorm.sum(dim=1)
    lse = top + total.log()
    loss = torch.where(valid, lse - picked, torch.zeros_like(lse))
    return unnorm, total, loss, safe_t, valid


def _slice_grad(h: torch.Tensor, t: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                ignore_index: int, row_scale: torch.Tensor | float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss of one slice and d(loss·row_scale)/d(logits) (float32, in place)."""
    grad, total, loss, safe_t, valid = _slice_logits(h, t, weight, bias, ignore_index)
    scale = valid.to(grad.dtype) * row_scale
    # scale·(softmax - onehot): normalisation and scaling in one pass, then the onehot
    # part as a scatter of -scale; ignored rows (scale 0) become zero.
    grad.mul_((scale / total).unsqueeze(1))
    grad.scatter_add_(1, safe_t.unsqueeze(1), (-scale).unsqueeze(1))
    return loss, grad


def _slices(n: int, chunks: int) -> list[slice]:
    step = math.ceil(n / chunks) if n else 1
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, chunks: int, ignore_index: int, reduction: str,
                out_dtype: torch.dtype) -> torch.Tensor:
        n = hidden.shape[0]
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        valid_count = (targets != ignore_index).sum()
        ctx.reduction, ctx.chunks, ctx.ignore_index = reduction, chunks, ignore_index
        ctx.out_dtype = out_dtype
        grads_now = reduction != "none" and (need_h or need_w or (need_b and bias is not None))
        row_scale = (1.0 / valid_count.clamp(min=1).to(torch.float32)) if reduction == "mean" else 1.0
        losses = torch.empty(n, dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if grads_now and need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if grads_now and need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) \
            if grads_now and need_b and bias is not None else None
        for rows in _slices(n, chunks):
            h, t = hidden[rows], targets[rows]
            if not grads_now:
                losses[rows] = _slice_logits(h, t, weight, bias, ignore_index)[2]
                continue
            loss, grad = _slice_grad(h, t, weight, bias, ignore_index, row_scale)
            losses[rows] = loss
            _accumulate(grad, h, weight, rows, grad_h, grad_w, grad_b)
            del grad  # else it lives on while the next slice's logits are allocated
        if reduction == "none":
            ctx.save_for_backward(hidden, weight, bias, targets)
            return losses.to(out_dtype)
        total = losses.sum()
        # mean over valid targets; 0/0 gives nan exactly like F.cross_entropy.
        result = total / valid_count.to(torch.float32) if reduction == "mean" else total
        ctx.grads = (grad_h, grad_w, grad_b)
        ctx.param_dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return result.to(out_dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        none8 = (None,) * 5
        if ctx.reduction != "none":
            if getattr(ctx, "grads", None) is None:
                raise RuntimeError(
                    "memscale.nn.linear_cross_entropy: backward ran twice through the same "
                    f"loss (retain_graph=True); with reduction={ctx.reduction!r} the gradients "
                    "are made in forward and consumed by the first backward. Recompute the loss.")
            grad_h, grad_w, grad_b = ctx.grads
            ctx.grads = None  # consumed: free the buffers as soon as autograd takes them
            g = grad_out.to(torch.float32)
            w_dtype, b_dtype = ctx.param_dtypes
            if grad_h is not None:
                grad_h = grad_h.mul_(g.to(grad_h.dtype))
            if grad_w is not None:
                grad_w = grad_w.mul_(g).to(w_dtype)
            if grad_b is not None:
                grad_b = grad_b.mul_(g).to(b_dtype)
            return (grad_h, grad_w, grad_b) + none8
        hidden, weight, bias, targets = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) \
            if need_b and bias is not None else None
        g_rows = grad_out.to(torch.float32)
        for rows in _slices(hidden.shape[0], ctx.chunks):
            _, grad = _slice_grad(hidden[rows], targets[rows], weight, bias, ctx.ignore_index,
                                  g_rows[rows])
            _accumulate(grad, hidden[rows], weight, rows, grad_h, grad_w, grad_b)
            del grad
        return (grad_h,
                None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype)) + none8


def _accumulate(grad: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, rows: slice,
                grad_h: torch.Tensor | None, grad_w: torch.Tensor | None,
                grad_b: torch.Tensor | None) -> None:
    g = grad.to(h.dtype)
    if grad_h is not None:
        torch.mm(g, weight.to(h.dtype), out=grad_h[rows]) if grad_h.is_contiguous() \
            else grad_h[rows].copy_(g @ weight)
    if grad_w is not None:
        grad_w.addmm_(grad.t(), h.float()) if h.dtype != torch.float32 else grad_w.addmm_(g.t(), h)
    if grad_b is not None:
        grad_b.add_(grad.sum(0))


def _head_params(head: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(head, torch.nn.Linear):
        return head.weight, head.bias
    if isinstance(head, torch.Tensor):
        return head, None
    if isinstance(head, tuple) and len(head) == 2 and isinstance(head[0], torch.Tensor):
        return head[0], head[1]
    raise TypeError(f"head: expected an nn.Linear, a weight tensor (vocab, hidden) or a "
                    f"(weight, bias) tuple; got {type(head).__name__}")


def linear_cross_entropy(hidden: torch.Tensor, head: Any, targets: torch.Tensor,
                         chunks: int | None = None, ignore_index: int = -100,
                         reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``head(hidden)`` against ``targets``, computed in token slices.

    Args:
        hidden: ``(..., hidden)`` activations entering the head.
        head: an ``nn.Linear`` (vocab × hidden), a weight tensor, or ``(weight, bias)``.
        targets: integer class ids with shape ``hidden.shape[:-1]``.
        chunks: number of token slices; ``None`` sizes slices so one slice's float32
            logits stay under ``DEFAULT_CHUNK_LOGITS_BYTES`` (``CUDA_CHUNK_LOGITS_BYTES``
            on a GPU): see :func:`default_chunks`.
        ignore_index: targets equal to it add no loss and no gradient.
        reduction: ``"mean"`` (over non-ignored targets), ``"sum"`` or ``"none"``.

    Returns:
        The loss: a scalar, or per-token losses of shape ``targets.shape`` for ``"none"``.
    """
    weight, bias = _head_params(head)
    if not isinstance(hidden, torch.Tensor) or hidden.dim() < 1:
        raise TypeError(f"hidden: expected a tensor (..., hidden); got {type(hidden).__name__}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"head: weight shape {tuple(weight.shape)} does not match hidden size "
                         f"{hidden.shape[-1]}; expected (vocab, {hidden.shape[-1]})")
    if not isinstance(targets, torch.Tensor) or targets.is_floating_point() or targets.is_complex():
        raise TypeError("targets: expected an integer tensor of class ids; got "
                        f"{getattr(targets, 'dtype', type(targets).__name__)}")
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"targets: shape {tuple(targets.shape)} must equal hidden.shape[:-1] = "
                         f"{tuple(hidden.shape[:-1])}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: {reduction!r} is not one of {_REDUCTIONS}")
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_t = targets.reshape(-1).long()
    n, vocab = flat_h.shape[0], weight.shape[0]
    if chunks is None:
        chunks = default_chunks(n, vocab, hidden.device)
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
        raise ValueError(f"chunks: expected an int >= 1 or None; got {chunks!r}")
    out_dtype = torch.promote_types(hidden.dtype, weight.dtype)
    loss = _LinearCrossEntropy.apply(flat_h, weight, bias, flat_t, chunks, ignore_index,
                                     reduction, out_dtype)
    return loss.reshape(targets.shape) if reduction == "none" else loss
