"""Read what a layer is from its modules: kind, dims, attention geometry, tileable axes.

Everything here inspects module classes from ``torch.nn`` and commonly used attribute
names (``num_heads``, ``n_heads``, ``num_attention_heads``, ``intermediate_size``...), the
same conventions Hugging Face and torchvision models follow; nothing is keyed on the
names of particular models.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

from .. import _C

HEAD_ATTRS = ("num_heads", "n_heads", "num_attention_heads", "n_head")
KV_HEAD_ATTRS = ("num_key_value_heads", "n_kv_heads", "num_kv_heads", "n_kv_head")
HEAD_DIM_ATTRS = ("head_dim", "d_kv", "head_size", "attention_head_size")
INTERMEDIATE_ATTRS = ("intermediate_size", "d_ff", "ffn_dim", "dim_feedforward", "n_inner")
VOCAB_ATTRS = ("vocab_size", "vocab", "n_vocab")
HIDDEN_ATTRS = ("hidden_size", "n_embd", "d_model", "embed_dim", "dim")
LAYER_ATTRS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers")
POSITION_ATTRS = ("max_position_embeddings", "n_positions", "max_seq", "max_seq_len", "n_ctx", "seq_length")

_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)
_RECURRENT = (nn.RNNBase, nn.RNNCellBase)
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm, _NormBase)
# Leaf modules that act on each position independently (chunking over batch/seq is exact):
# one list in core (position_wise_kinds.hpp), shared with the libtorch layer.
_POSITIONWISE_LEAVES = tuple(getattr(nn, kind) for kind in _C.position_wise_leaf_kinds() if hasattr(nn, kind))
# ...of which these are position-wise only over the last (feature) axis,
_FEATURE_AXIS_LEAVES = tuple(getattr(nn, kind) for kind in _C.feature_axis_kinds() if hasattr(nn, kind))
# ...and these draw a random mask while training (chunks would draw other masks).
_RANDOM_MASK_LEAVES = tuple(getattr(nn, kind) for kind in _C.random_mask_kinds() if hasattr(nn, kind))


def _int_attr(obj: Any, names: Iterable[str]) -> int:
    for n in names:
        v = getattr(obj, n, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return 0


def _leaves(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if next(m.children(), None) is None]


def is_norm(module: nn.Module) -> bool:
    """A normalization leaf: a torch norm class, or a childless module whose class name ends in Norm."""
    if isinstance(module, _NORMS):
        return True
    return next(module.children(), None) is None and type(module).__name__.lower().endswith("norm")


def is_attention(module: nn.Module) -> bool:
    """``nn.MultiheadAttention``, a module that declares a head count attribute, or one that
    declares a head width and keeps a config declaring the head count (Hugging Face's
    attention modules read their head counts from ``self.config``)."""
    if isinstance(module, nn.MultiheadAttention) or _int_attr(module, HEAD_ATTRS) > 0:
        return True
    return _int_attr(module, HEAD_DIM_ATTRS) > 0 and _int_attr(_text_config(getattr(module, "config", None)),
                                                               HEAD_ATTRS) > 0


def attention_modules(module: nn.Module) -> list[nn.Module]:
    """Outermost attention modules in ``module``'s subtree (an attention inside another is not counted)."""
    found: list[nn.Module] = []

    def walk(m: nn.Module) -> None:
        if is_attention(m):
            found.append(m)
            return
        for c in m.children():
            walk(c)

    walk(module)
    return found


def _positionwise_leaf(m: nn.Module) -> bool:
    if isinstance(m, _FEATURE_AXIS_LEAVES):
        return getattr(m, "dim", None) == -1
    return isinstance(m, _POSITIONWISE_LEAVES) or (is_norm(m) and not isinstance(m, (_NormBase, nn.GroupNorm)))


def is_positionwise(module: nn.Module) -> bool:
    """Every leaf is a Linear, pointwise activation, dropout or per-position norm (no BatchNorm)."""
    leaves = _leaves(module)
    return bool(leaves) and all(_positionwise_leaf(m) for m in leaves)


def draws_mask(module: nn.Module) -> bool:
    """Some leaf of ``module`` draws a random mask now (an active dropout)."""
    return any(isinstance(m, _RANDOM_MASK_LEAVES) and m.training and getattr(m, "p", 0) > 0
               for m in module.modules())


def _linears(module: nn.Module, skip_attention: bool) -> list[nn.Linear]:
    out: list[nn.Linear] = []

    def walk(m: nn.Module) -> None:
        if skip_attention and is_attention(m):
            return
        if isinstance(m, nn.Linear):
            out.append(m)
        for c in m.children():
            walk(c)

    walk(module)
    return out


def classify(module: nn.Module, repeated: bool) -> str:
    """Kind of a layer from its modules (``lm_head`` is assigned later from execution order)."""
    mods = list(module.modules())
    if repeated:
        return "block"
    if any(isinstance(m, _EMBEDDINGS) for m in mods):
        return "embedding"
    if any(isinstance(m, _RECURRENT) for m in mods):
        return "recurrent"
    if is_norm(module):
        return "norm"
    attn = attention_modules(module)
    if attn:
        # attention plus Linear layers outside it (an MLP) is a block; attention alone is attention
        return "block" if _linears(module, skip_attention=True) else "attention"
    if any(isinstance(m, _ConvNd) for m in mods):
        return "conv"
    if is_positionwise(module) and len(_linears(module, False)) >= 2:
        return "mlp"
    return "other"


def has_linear(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Linear) for m in module.modules())


def batch_coupled(module: nn.Module) -> bool:
    """BatchNorm or recurrence: chunking over batch (or seq) would change the result."""
    return any(isinstance(m, (_NormBase, nn.GroupNorm) + _RECURRENT) for m in module.modules())


@dataclass(frozen=True)
class Dims:
    hidden: int = 0
    intermediate: int = 0
    heads: int = 0
    vocab: int = 0
    seq: int = 0
    batch: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"batch": self.batch, "heads": self.heads, "hidden": self.hidden,
                "intermediate": self.intermediate, "seq": self.seq, "vocab": self.vocab}


@dataclass(frozen=True)
class InputGeometry:
    """Shape facts of a layer's first tensor input, observed during the profiling run."""

    shape: tuple[int, ...]
    is_float: bool


def batch_seq_of(geom: InputGeometry | None, graph_batch: int, graph_seq: int) -> tuple[int, int]:
    """(batch, seq) of a layer from its input: ids ``(B, S)``, tokens ``(B, S, D)`` or ``(S, B, D)``.

    An input without the graph's batch on axis 0 or 1 (e.g. a position vector) takes the
    graph's batch and seq.
    """
    if geom is None or len(geom.shape) < 1:
        return graph_batch, graph_seq
    shape = geom.shape
    if shape[0] == graph_batch:
        batch_dim = 0
    elif len(shape) >= 2 and shape[1] == graph_batch:
        batch_dim = 1
    else:
        return graph_batch, graph_seq
    seq = 0
    if (geom.is_float and len(shape) == 3) or (not geom.is_float and len(shape) == 2):
        seq = shape[1 - batch_dim]
    return shape[batch_dim], seq


def hidden_of(module: nn.Module, geom: InputGeometry | None) -> int:
    """Feature width: an embedding's dim, else the feature axis of the float input, else a Linear's."""
    embs = [m for m in module.modules() if isinstance(m, nn.Embedding)]
    if embs:
        return embs[0].embedding_dim
    if geom is not None and geom.is_float and len(geom.shape) >= 2:
        # (N, C, H, W) images carry features on axis 1; token tensors on the last axis
        return geom.shape[1] if len(geom.shape) == 4 else geom.shape[-1]
    lin = _linears(module, False)
    return lin[0].in_features if lin else 0


def _first_attr(modules: Iterable[nn.Module], names: Iterable[str]) -> int:
    names = tuple(names)
    return next((v for v in (_int_attr(m, names) for m in modules) if v), 0)


def heads_of(module: nn.Module, config: Any) -> int:
    """Head count of the layer's attention (its modules' attributes, else the model config)."""
    attn = attention_modules(module)
    if not attn:
        return 0
    return _first_attr(attn, HEAD_ATTRS) or _int_attr(config, HEAD_ATTRS)


def intermediate_of(module: nn.Module, hidden: int, config: Any) -> int:
    """Widest Linear fed by the hidden width outside attention (the MLP's inner width);
    else the widest hidden x inner weight matrix outside attention (a transposed linear,
    e.g. Hugging Face's Conv1D); else a declared attribute, else the model config's."""
    widths = [lin.out_features for lin in _linears(module, skip_attention=True)
              if lin.in_features == hidden and lin.out_features > hidden]
    if widths:
        return max(widths)
    matrix = _matrix_inner_width(module, hidden)
    if matrix:
        return matrix
    declared = _first_attr(module.modules(), INTERMEDIATE_ATTRS)
    if declared or not attention_modules(module):
        return declared
    return _int_attr(_text_config(config), INTERMEDIATE_ATTRS)


def _matrix_inner_width(module: nn.Module, hidden: int, exclude: int = 0) -> int:
    """Widest other side of a 2-D ``weight`` (hidden x inner, either orientation) of a leaf
    outside attention and embeddings; ``exclude`` skips that width (the vocabulary)."""
    if hidden <= 0:
        return 0
    widest = 0

    def walk(m: nn.Module) -> None:
        nonlocal widest
        if is_attention(m) or isinstance(m, _EMBEDDINGS):
            return
        w = getattr(m, "weight", None)
        if next(m.children(), None) is None and isinstance(w, torch.Tensor) and w.dim() == 2 and hidden in w.shape:
            other = w.shape[1] if w.shape[0] == hidden else w.shape[0]
            if other > hidden and other != exclude:
                widest = max(widest, int(other))
        for c in m.children():
            walk(c)

    walk(module)
    return widest


def vocab_of(module: nn.Module, kind: str) -> int:
    if kind == "embedding":
        embs = [m for m in module.modules() if isinstance(m, _EMBEDDINGS)]
        return embs[0].num_embeddings if embs else 0
    if kind == "lm_head":
        lin = _linears(module, False)
        return lin[-1].out_features if lin else 0
    return 0


def kv_width_per_token(module: nn.Module, hidden: int) -> int:
    """Elements of K (or V) per token summed over the layer's attention modules (their own
    attributes, else the config they keep)."""
    total = 0
    for m in attention_modules(module):
        if isinstance(m, nn.MultiheadAttention):
            total += m.embed_dim
            continue
        cfg = _text_config(getattr(m, "config", None))
        heads = _int_attr(m, HEAD_ATTRS) or _int_attr(cfg, HEAD_ATTRS)
        kv_heads = _int_attr(m, KV_HEAD_ATTRS) or _int_attr(cfg, KV_HEAD_ATTRS) or heads
        head_dim = _int_attr(m, HEAD_DIM_ATTRS) or _int_attr(cfg, HEAD_DIM_ATTRS) or (hidden // heads if heads else 0)
        total += kv_heads * head_dim
    return total


def _text_config(config: Any) -> Any:
    """The decoder's text config of a composite Hugging Face config, else ``config`` itself."""
    get = getattr(config, "get_text_config", None)
    if callable(get):
        try:
            return get(decoder=True)
        except (TypeError, ValueError, AttributeError):
            return config
    return config


@dataclass(frozen=True)
class ModelDims:
    """Dims a model declares in its config (0 = not declared), filled in from its modules
    where the config is silent (the inner width of a GPT-2 style MLP)."""

    layers: int = 0
    hidden: int = 0
    intermediate: int = 0
    heads: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    vocab: int = 0
    max_positions: int = 0

    @property
    def kv_width(self) -> int:
        """Elements of K (or V) per token per layer: kv heads x head width."""
        return self.kv_heads * self.head_dim


def model_dims(model: Any) -> ModelDims:
    """Dims of ``model`` (a module with ``config``) or of a config object: ``hidden_size``,
    ``intermediate_size``, ``vocab_size``, ``num_attention_heads``, ``num_key_value_heads``,
    ``head_dim``, ``max_position_embeddings``, ``num_hidden_layers`` and their common
    aliases (``n_embd``, ``d_model``, ``n_inner``, ``d_ff``, ``n_head``, ``n_positions``...).

    Example:
        >>> from types import SimpleNamespace
        >>> d = model_dims(SimpleNamespace(n_embd=64, n_head=4, n_layer=2, vocab_size=1000, n_positions=128))
        >>> (d.hidden, d.heads, d.kv_heads, d.head_dim, d.max_positions)
        (64, 4, 4, 16, 128)
    """
    module = model if isinstance(model, nn.Module) else None
    cfg = _text_config(getattr(model, "config", None) if module is not None else model)
    hidden = _int_attr(cfg, HIDDEN_ATTRS)
    heads = _int_attr(cfg, HEAD_ATTRS)
    kv_heads = _int_attr(cfg, KV_HEAD_ATTRS) or heads
    head_dim = _int_attr(cfg, HEAD_DIM_ATTRS) or (hidden // heads if heads else 0)
    vocab = _int_attr(cfg, VOCAB_ATTRS)
    inner = _int_attr(cfg, INTERMEDIATE_ATTRS)
    if not inner and module is not None:
        inner = _matrix_inner_width(module, hidden, exclude=vocab)
    return ModelDims(layers=_int_attr(cfg, LAYER_ATTRS), hidden=hidden, intermediate=inner, heads=heads,
                     kv_heads=kv_heads, head_dim=head_dim, vocab=vocab, max_positions=_int_attr(cfg, POSITION_ATTRS))


def tileable_axes(module: nn.Module, kind: str, batch: int, seq: int) -> list[str]:
    """Axes over which chunking the layer is exact: position-wise MLPs and heads only, and
    not while a dropout in them draws masks (each chunk would draw its own)."""
    if kind not in ("mlp", "lm_head") or not is_positionwise(module) or batch_coupled(module) \
            or draws_mask(module):
        return []
    axes = []
    if seq > 0:
        axes.append("seq")
    if batch > 0:
        axes.append("batch")
    return axes


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype, device="meta").element_size()
