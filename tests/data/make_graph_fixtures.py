#!/usr/bin/env python3
"""Writes the ModelGraph fixtures in tests/data/graphs/ from architecture dimensions.

Run from anywhere: ``python tests/data/make_graph_fixtures.py`` (no torch needed). The
output is deterministic (sorted keys, integers only), so re-running it leaves the files
unchanged unless a formula changes. ``--check`` exits 1 when a committed file differs.

Every per-layer figure follows the profiler's semantics (docs/memory-model.md):

* ``activation_bytes``: tensors saved for backward by the layer's ops, deduplicated by
  storage and attributed to the *first* layer that saves the storage (a block's output
  saved by the next block's first op counts in the next block, unless the block itself
  saved it, e.g. an in-place ReLU output).
* ``transient_bytes`` = max(forward scratch, backward scratch): forward scratch is what
  the forward allocates beyond its saved tensors (its output included); backward scratch
  is what the backward allocates (parameter gradients, gradients of its intermediates and
  the gradient it passes on).
* ``grad_bytes`` = trainable parameter bytes; ``optimizer_bytes`` = 2x for adam/adamw, 1x
  for sgd_momentum, 0 for sgd; mixed precision adds 4 bytes per parameter element (fp32
  master weights), as the profiler computes it.
* ``flops``: forward multiply-adds x 2.

Notation in the formulas: b batch, s sequence length, T = b*s tokens, h hidden, f MLP
intermediate, a attention heads, hk = key/value width (h without grouped-query
attention), V vocabulary, e bytes per element of the dtype; masks of dropout are 1 byte
per element, normalisation statistics 4 bytes per row.

Transformer block, eager attention (GPT-2, T5, ViT), dropout p > 0 (GPT-2, T5):
  saved   = 8*T*h*e                 (block input, LN1 out, q, k, v, attention out,
                                     LN2 input, LN2 out)
          + 2*T*f*e                 (activation input and output in the MLP)
          + 2*a*b*s*s_kv*e          (softmax output, dropped probabilities)
          + a*b*s*s_kv + 2*T*h      (dropout masks; ViT's p = 0 has none and one s^2 term)
          + 2*T*4                   (LayerNorm statistics)
  transient = params + 2*a*b*s*s_kv*e + T*f*e + T*h*e   (backward: parameter grads, grads
                                                         of probabilities and scores, of
                                                         the MLP intermediate, of the input)
  flops   = 2*T*(4*h*h + 2*h*f) + 4*b*s*s_kv*h
Llama sublayers (SDPA attention, no dropout, bf16):
  input_layernorm / post_attention_layernorm (RMSNorm): saved = T*h*e + T*4 (input, rstd)
  self_attn: saved = T*h*e (q/k/v projection input) + T*h*e + 2*T*hk*e (q, k, v after RoPE)
             + T*h*e (attention output) + a*b*s*4 (log-sum-exp);
             transient = params + 3*T*h*e (grads of q, k, v) ; flops = 2*T*(2*h*h + 2*h*hk) + 4*b*s*s*h
  mlp (SwiGLU): saved = T*h*e (gate/up input) + 4*T*f*e (gate out, silu out, up out, product);
             transient = params + 3*T*f*e ; flops = 6*T*h*f ; tileable over seq and batch
Embedding: saved = T*8 (int64 ids); transient = V*h*e (dense weight gradient) + T*h*e.
LM head with the loss (the executor tiles head + cross-entropy together):
  saved = T*h*e (head input) + T*V*e (log-softmax output); transient = 2*T*V*e + T*h*e
  (logits and their shifted copy forward, their gradients backward); flops = 2*T*h*V.
ResNet-50 bottleneck (in c, width m, out 4m, input H x W, output H' x W' = H/stride,
in-place ReLU, batch norm saving its input):
  saved = [c*H*W if the block input is not already saved] + 2*m*H*W (bn1 in, relu1 out)
          + 2*m*H'*W' (bn2 in, relu2 out) + 4m*H'*W' (bn3 in) + 4m*H'*W' (relu out)
          + [4m*H'*W' downsample bn in]            all x b x e
  transient = params + 2*4m*H'*W'*b*e + c*H*W*b*e
  flops = 2*b*(c*m*H*W... with H'W' for the strided convs) as written below.
T5 decoder blocks add cross-attention: q from the decoder (T_t*h), k and v projected from
the encoder output (2*b*s_src*h*e per layer; the encoder output itself is saved once, by
the first decoder block), scores a*b*s_t*s_src.
Inference (Llama 7B decode): activation_bytes = 0 (nothing is saved without autograd);
transient = the prefill forward scratch of the layer over b x s tokens;
kv_cache_bytes = 2*b*s*hk*e per attention layer.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OPT_FACTOR = {"none": 0, "sgd": 0, "sgd_momentum": 1, "adam": 2, "adamw": 2}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class Graph:
    def __init__(self, name: str, dtype: str, batch: int, seq: int, training: bool, optimizer: str,
                 mixed_precision: bool, input_bytes: int) -> None:
        self.doc = {"model_name": name, "dtype": dtype, "batch": batch, "seq": seq, "training": training,
                    "optimizer": optimizer if training else "none", "mixed_precision": mixed_precision,
                    "input_bytes": int(input_bytes), "layers": []}
        self.e = DTYPE_BYTES[dtype]

    def add(self, name: str, kind: str, *, params: int = 0, buffers: int = 0, saved: int = 0, transient: int = 0,
            inp: int = 0, out: int = 0, flops: int = 0, dims: dict | None = None, tileable=(), kv: int = 0) -> None:
        """params in elements (stored in the graph dtype); the rest in bytes."""
        d = self.doc
        e = self.e
        param_bytes = params * e
        trainable = param_bytes if d["training"] else 0
        optimizer = OPT_FACTOR[d["optimizer"]] * trainable
        if d["mixed_precision"] and d["training"]:
            optimizer += 4 * params
        full_dims = {"hidden": 0, "intermediate": 0, "heads": 0, "vocab": 0, "seq": 0, "batch": 0}
        full_dims.update(dims or {})
        d["layers"].append({
            "index": len(d["layers"]), "name": name, "kind": kind,
            "param_bytes": int(param_bytes), "buffer_bytes": int(buffers), "grad_bytes": int(trainable),
            "optimizer_bytes": int(optimizer), "activation_bytes": int(saved if d["training"] else 0),
            "transient_bytes": int(transient), "input_bytes": int(inp), "output_bytes": int(out),
            "kv_cache_bytes": int(kv), "flops": int(flops), "dims": full_dims, "tileable": list(tileable),
            "measured_peak_bytes": 0, "measured_activation_bytes": 0,
        })


def eager_block(g: Graph, name: str, *, b: int, s: int, h: int, f: int, a: int, dropout: bool, s_kv: int | None = None,
                cross_src: int = 0, save_input: bool = True, params: int, mlp_act_saves: int = 2) -> None:
    """GPT-2 / ViT / T5 block with eager attention; cross_src > 0 adds cross-attention."""
    e = g.e
    T = b * s
    s_kv = s_kv or s
    saved = (8 if save_input else 7) * T * h * e + mlp_act_saves * T * f * e + 2 * T * 4
    scores = a * b * s * s_kv
    saved += (2 * scores * e + scores + 2 * T * h) if dropout else scores * e
    flops = 2 * T * (4 * h * h + 2 * h * f) + 4 * b * s * s_kv * h
    transient = params * e + 2 * scores * e + T * f * e + T * h * e
    if cross_src:
        c_scores = a * b * s * cross_src
        saved += 3 * T * h * e + 2 * b * cross_src * h * e  # ln, q, attn out + projected k, v
        saved += (2 * c_scores * e + c_scores + T * h) if dropout else c_scores * e
        flops += 2 * T * 2 * h * h + 2 * 2 * b * cross_src * h * h + 4 * b * s * cross_src * h
        transient += 2 * c_scores * e
    g.add(name, "block", params=params, saved=saved, transient=transient, inp=T * h * e, out=T * h * e, flops=flops,
          dims={"hidden": h, "intermediate": f, "heads": a, "seq": s, "batch": b})


def lm_head(g: Graph, name: str, *, b: int, s: int, h: int, V: int, params: int) -> None:
    e = g.e
    T = b * s
    g.add(name, "lm_head", params=params, saved=T * h * e + T * V * e, transient=2 * T * V * e + T * h * e,
          inp=T * h * e, out=T * V * e, flops=2 * T * h * V, dims={"hidden": h, "vocab": V, "seq": s, "batch": b},
          tileable=("seq", "batch"))


def embedding(g: Graph, name: str, *, b: int, s: int, h: int, V: int, tied_elsewhere: bool = False) -> None:
    e = g.e
    T = b * s
    g.add(name, "embedding", params=V * h, saved=T * 8, transient=V * h * e + T * h * e, inp=T * 8, out=T * h * e,
          flops=0, dims={"hidden": h, "vocab": V, "seq": s, "batch": b})


def layer_norm(g: Graph, name: str, *, T: int, h: int, rms: bool, b: int, s: int) -> None:
    e = g.e
    g.add(name, "norm", params=h if rms else 2 * h, saved=T * h * e + T * 4 * (1 if rms else 2),
          transient=2 * T * h * e, inp=T * h * e, out=T * h * e, flops=8 * T * h,
          dims={"hidden": h, "seq": s, "batch": b})


def gpt2_small() -> Graph:
    b, s, h, f, a, V, L = 8, 1024, 768, 3072, 12, 50257, 12
    g = Graph("GPT2LMHeadModel", "float32", b, s, True, "adamw", False, input_bytes=2 * b * s * 8)
    T = b * s
    embedding(g, "transformer.wte", b=b, s=s, h=h, V=V)
    g.add("transformer.wpe", "embedding", params=s * h, saved=0, transient=s * h * 4 + T * h * 4, inp=0,
          out=s * h * 4, dims={"hidden": h, "seq": s, "batch": b})
    for i in range(L):
        eager_block(g, f"transformer.h.{i}", b=b, s=s, h=h, f=f, a=a, dropout=True, params=12 * h * h + 13 * h)
    layer_norm(g, "transformer.ln_f", T=T, h=h, rms=False, b=b, s=s)
    lm_head(g, "lm_head", b=b, s=s, h=h, V=V, params=0)  # tied to transformer.wte
    return g


def vit_b16() -> Graph:
    b, h, f, a, L, classes = 64, 768, 3072, 12, 12, 1000
    s = 197  # 14 x 14 patches + [CLS]
    g = Graph("ViTForImageClassification", "float32", b, s, True, "adamw", False, input_bytes=b * 3 * 224 * 224 * 4)
    T = b * s
    patch_params = 3 * 16 * 16 * h + h + h + s * h  # conv, bias, cls token, position embeddings
    g.add("vit.embeddings", "embedding", params=patch_params, saved=b * 3 * 224 * 224 * 4,
          transient=patch_params * 4 + 2 * T * h * 4, inp=b * 3 * 224 * 224 * 4, out=T * h * 4,
          flops=2 * b * 196 * 3 * 256 * h, dims={"hidden": h, "seq": s, "batch": b})
    for i in range(L):
        eager_block(g, f"vit.encoder.layer.{i}", b=b, s=s, h=h, f=f, a=a, dropout=False, params=12 * h * h + 13 * h)
    layer_norm(g, "vit.layernorm", T=T, h=h, rms=False, b=b, s=s)
    g.add("classifier", "lm_head", params=h * classes + classes, saved=b * h * 4 + b * classes * 4,
          transient=(h * classes + classes) * 4 + 2 * b * classes * 4, inp=T * h * 4, out=b * classes * 4,
          flops=2 * b * h * classes, dims={"hidden": h, "vocab": classes, "batch": b}, tileable=("batch",))
    return g


def resnet50() -> Graph:
    b, e = 64, 4
    g = Graph("ResNet", "float32", b, 0, True, "sgd_momentum", False, input_bytes=b * 3 * 224 * 224 * 4)
    img = b * 3 * 224 * 224 * e
    g.add("conv1", "conv", params=64 * 3 * 49, saved=img, transient=64 * 3 * 49 * e + b * 64 * 112 * 112 * e, inp=img,
          out=b * 64 * 112 * 112 * e, flops=2 * b * 64 * 3 * 49 * 112 * 112, dims={"batch": b})
    g.add("bn1", "norm", params=128, buffers=129 * 4 + 4, saved=b * 64 * 112 * 112 * e,
          transient=2 * b * 64 * 112 * 112 * e, inp=b * 64 * 112 * 112 * e, out=b * 64 * 112 * 112 * e,
          flops=8 * b * 64 * 112 * 112, dims={"batch": b})
    g.add("relu", "other", saved=b * 64 * 112 * 112 * e, transient=b * 64 * 112 * 112 * e,
          inp=b * 64 * 112 * 112 * e, out=b * 64 * 112 * 112 * e, flops=b * 64 * 112 * 112, dims={"batch": b})
    g.add("maxpool", "other", saved=b * 64 * 56 * 56 * 8, transient=b * 64 * 56 * 56 * e + b * 64 * 112 * 112 * e,
          inp=b * 64 * 112 * 112 * e, out=b * 64 * 56 * 56 * e, flops=9 * b * 64 * 56 * 56, dims={"batch": b})
    c, H = 64, 56
    for stage, (m, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], start=1):
        for i in range(blocks):
            st = stride if i == 0 else 1
            Ho = H // st
            ds = i == 0
            params = c * m + 9 * m * m + 4 * m * m + 2 * (m + m + 4 * m) + (c * 4 * m + 2 * 4 * m if ds else 0)
            buffers = (2 * (m + m + 4 * m) + (2 * 4 * m if ds else 0)) * 4 + (4 if ds else 3) * 8
            # The first block's input is the max-pool output, which max-pool does not save.
            saved = (c * H * H if (stage == 1 and i == 0) else 0) + 2 * m * H * H + 2 * m * Ho * Ho + 4 * m * Ho * Ho
            saved += 4 * m * Ho * Ho + (4 * m * Ho * Ho if ds else 0)
            flops = 2 * b * (c * m * H * H + 9 * m * m * Ho * Ho + 4 * m * m * Ho * Ho + (c * 4 * m * Ho * Ho if ds else 0))
            g.add(f"layer{stage}.{i}", "conv", params=params, buffers=buffers, saved=saved * b * e,
                  transient=params * e + 2 * 4 * m * Ho * Ho * b * e + c * H * H * b * e, inp=c * H * H * b * e,
                  out=4 * m * Ho * Ho * b * e, flops=flops, dims={"hidden": 4 * m, "batch": b})
            c, H = 4 * m, Ho
    g.add("avgpool", "other", saved=0, transient=b * c * e, inp=b * c * H * H * e, out=b * c * e,
          flops=b * c * H * H, dims={"batch": b})
    g.add("fc", "lm_head", params=c * 1000 + 1000, saved=b * c * e + b * 1000 * e,
          transient=(c * 1000 + 1000) * e + 2 * b * 1000 * e, inp=b * c * e, out=b * 1000 * e,
          flops=2 * b * c * 1000, dims={"hidden": c, "vocab": 1000, "batch": b}, tileable=("batch",))
    return g


def t5_base() -> Graph:
    b, s_src, s_tgt, h, f, a, V, L = 16, 512, 128, 768, 3072, 12, 32128, 12
    g = Graph("T5ForConditionalGeneration", "float32", b, s_src, True, "adamw", False,
              input_bytes=b * (2 * s_src + 2 * s_tgt) * 8)
    e = 4
    embedding(g, "shared", b=b, s=s_src, h=h, V=V)
    enc_params = 4 * h * h + 2 * h * f + 2 * h  # q, k, v, o, wi, wo, two RMS norms (no biases)
    for i in range(L):
        eager_block(g, f"encoder.block.{i}", b=b, s=s_src, h=h, f=f, a=a, dropout=True,
                    params=enc_params + (32 * a if i == 0 else 0))
    layer_norm(g, "encoder.final_layer_norm", T=b * s_src, h=h, rms=True, b=b, s=s_src)
    dec_params = 8 * h * h + 2 * h * f + 3 * h
    for i in range(L):
        eager_block(g, f"decoder.block.{i}", b=b, s=s_tgt, h=h, f=f, a=a, dropout=True, cross_src=s_src,
                    params=dec_params + (32 * a if i == 0 else 0))
        if i == 0:  # the encoder output is saved once, by the first decoder block's cross-attention
            g.doc["layers"][-1]["activation_bytes"] += b * s_src * h * e
    layer_norm(g, "decoder.final_layer_norm", T=b * s_tgt, h=h, rms=True, b=b, s=s_tgt)
    lm_head(g, "lm_head", b=b, s=s_tgt, h=h, V=V, params=0)  # T5-base ties the head to `shared`
    return g


def llama7b(training: bool) -> Graph:
    h, f, a, V, L = 4096, 11008, 32, 32000, 32
    hk = h  # 7B: no grouped-query attention
    b, s = (1, 2048) if training else (8, 4096)
    g = Graph("LlamaForCausalLM", "bfloat16", b, s, training, "adamw", training, input_bytes=2 * b * s * 8)
    e = 2
    T = b * s
    embedding(g, "model.embed_tokens", b=b, s=s, h=h, V=V)
    dims = {"hidden": h, "intermediate": f, "heads": a, "vocab": 0, "seq": s, "batch": b}
    for i in range(L):
        p = f"model.layers.{i}"
        layer_norm(g, f"{p}.input_layernorm", T=T, h=h, rms=True, b=b, s=s)
        attn_params = 2 * h * h + 2 * h * hk
        g.add(f"{p}.self_attn", "attention", params=attn_params, buffers=(h // a) * 4,
              saved=T * h * e + T * h * e + 2 * T * hk * e + T * h * e + a * b * s * 4,
              transient=attn_params * e + 3 * T * h * e, inp=T * h * e, out=T * h * e,
              flops=2 * T * (2 * h * h + 2 * h * hk) + 4 * b * s * s * h, dims={**dims, "intermediate": 0},
              kv=0 if training else 2 * b * s * hk * e)
        layer_norm(g, f"{p}.post_attention_layernorm", T=T, h=h, rms=True, b=b, s=s)
        g.add(f"{p}.mlp", "mlp", params=3 * h * f, saved=T * h * e + 4 * T * f * e,
              transient=3 * h * f * e + 3 * T * f * e, inp=T * h * e, out=T * h * e, flops=6 * T * h * f,
              dims=dims, tileable=("seq", "batch"))
    layer_norm(g, "model.norm", T=T, h=h, rms=True, b=b, s=s)
    lm_head(g, "lm_head", b=b, s=s, h=h, V=V, params=h * V)
    return g


FIXTURES = {
    "gpt2_small_train.json": gpt2_small,
    "llama7b_train.json": lambda: llama7b(True),
    "llama7b_infer.json": lambda: llama7b(False),
    "vit_b16_train.json": vit_b16,
    "resnet50_train.json": resnet50,
    "t5_base_train.json": t5_base,
}


def render(graph: Graph) -> str:
    return json.dumps(graph.doc, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "graphs", help="output directory")
    parser.add_argument("--check", action="store_true", help="fail if a committed fixture differs")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    stale = []
    for name, build in FIXTURES.items():
        text = render(build())
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
            continue
        path.write_text(text)
    if stale:
        print("stale fixtures (re-run tests/data/make_graph_fixtures.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
