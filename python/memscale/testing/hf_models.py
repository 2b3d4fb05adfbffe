"""Hugging Face ``transformers`` models built from configs (nothing downloaded), for tests
and the estimate-accuracy benchmark.

Each case is a model, its example inputs (keyword arguments of ``forward``) and how the
step computes its loss: inside the model from ``labels`` (``loss_fn`` None), or outside,
``loss_fn(output)`` on the logits (the plain ``F.cross_entropy`` loop). Sizes are tiny so
a CPU step takes milliseconds, with logits and activations large enough beside the
weights that the estimate of the step, not of the weights, is what gets compared.

Example:
    >>> from memscale.testing import hf_models
    >>> case = hf_models.build("llama", labels=False)
    >>> out = case.model(**case.inputs)
    >>> case.loss_fn(out).backward()
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

VOCAB = 2000
BATCH, SEQ = 4, 64


@dataclass
class Case:
    """One model and its step: ``model(**inputs)``, then ``loss_fn(output)`` (None: ``output.loss``)."""

    name: str
    model: nn.Module
    inputs: dict[str, torch.Tensor]
    loss_fn: Callable[[Any], torch.Tensor] | None = None
    autocast: torch.dtype | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _tokens(gen: torch.Generator, batch: int, seq: int, vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=gen)


def _lm_loss(labels: torch.Tensor) -> Callable[[Any], torch.Tensor]:
    """The plain loop's loss outside the model: cross-entropy of the logits against ``labels``."""
    def loss_fn(out: Any) -> torch.Tensor:
        return F.cross_entropy(out.logits.flatten(0, -2), labels.flatten())
    return loss_fn


def _causal(name: str, config: Any, model_cls: type, batch: int, seq: int, labels: bool, seed: int) -> Case:
    torch.manual_seed(seed)
    model = model_cls(config)
    gen = torch.Generator().manual_seed(seed)
    ids = _tokens(gen, batch, seq, config.vocab_size)
    if labels:
        return Case(name, model, {"input_ids": ids, "labels": ids.clone()})
    return Case(name, model, {"input_ids": ids}, _lm_loss(_tokens(gen, batch, seq, config.vocab_size)))


def gpt2(batch: int = BATCH, seq: int = SEQ, labels: bool = True, seed: int = 0) -> Case:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=VOCAB, n_positions=max(seq, 64), n_embd=128, n_layer=2, n_head=4)
    return _causal("gpt2", config, GPT2LMHeadModel, batch, seq, labels, seed)


def _llama_config() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def llama(batch: int = BATCH, seq: int = SEQ, labels: bool = True, seed: int = 0) -> Case:
    from transformers import LlamaForCausalLM

    return _causal("llama", _llama_config(), LlamaForCausalLM, batch, seq, labels, seed)


def qwen2(batch: int = BATCH, seq: int = SEQ, labels: bool = True, seed: int = 0) -> Case:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return _causal("qwen2", config, Qwen2ForCausalLM, batch, seq, labels, seed)


def mixtral(batch: int = BATCH, seq: int = SEQ, labels: bool = True, seed: int = 0) -> Case:
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                           num_local_experts=4, num_experts_per_tok=2)
    return _causal("mixtral", config, MixtralForCausalLM, batch, seq, labels, seed)


def llama_lora(batch: int = BATCH, seq: int = SEQ, labels: bool = True, seed: int = 0) -> Case:
    """Llama with a PEFT LoRA adapter on the attention projections: the base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    case = llama(batch, seq, labels, seed)
    torch.manual_seed(seed)
    case.model = get_peft_model(case.model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                       lora_dropout=0.0))
    case.name = "llama_lora"
    return case


def llama_bf16_autocast(batch: int = BATCH, seq: int = SEQ, labels: bool = True, seed: int = 0) -> Case:
    """Llama in float32 trained under ``torch.autocast("cpu", torch.bfloat16)``."""
    case = llama(batch, seq, labels, seed)
    case.name, case.autocast = "llama_bf16_autocast", torch.bfloat16
    return case


def bert(batch: int = BATCH, seq: int = SEQ, labels: bool = True, seed: int = 0) -> Case:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=256, max_position_embeddings=max(seq, 64), num_labels=3)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    gen = torch.Generator().manual_seed(seed)
    ids = _tokens(gen, batch, seq)
    y = torch.randint(0, 3, (batch,), generator=gen)
    if labels:
        return Case("bert", model, {"input_ids": ids, "labels": y})
    return Case("bert", model, {"input_ids": ids}, lambda out: F.cross_entropy(out.logits, y))


def t5(batch: int = BATCH, seq: int = SEQ, labels: bool = True, seed: int = 0) -> Case:
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=VOCAB, d_model=128, d_kv=32, d_ff=256, num_layers=2, num_heads=4,
                      decoder_start_token_id=0, pad_token_id=0)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    gen = torch.Generator().manual_seed(seed)
    ids, target = _tokens(gen, batch, seq), _tokens(gen, batch, seq // 2)
    if labels:
        return Case("t5", model, {"input_ids": ids, "labels": target})
    decoder_ids = torch.cat([torch.zeros(batch, 1, dtype=torch.long), target[:, :-1]], dim=1)
    return Case("t5", model, {"input_ids": ids, "decoder_input_ids": decoder_ids}, _lm_loss(target))


def vit(batch: int = BATCH, seq: int = SEQ, labels: bool = True, seed: int = 0) -> Case:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=32, patch_size=4, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=256, num_labels=10)
    torch.manual_seed(seed)
    model = ViTForImageClassification(config)
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    if labels:
        return Case("vit", model, {"pixel_values": pixels, "labels": y})
    return Case("vit", model, {"pixel_values": pixels}, lambda out: F.cross_entropy(out.logits, y))


BUILDERS: dict[str, Callable[..., Case]] = {
    "gpt2": gpt2, "llama": llama, "qwen2": qwen2, "mixtral": mixtral, "bert": bert, "t5": t5, "vit": vit,
    "llama_lora": llama_lora, "llama_bf16_autocast": llama_bf16_autocast,
}


def available() -> bool:
    """Whether ``transformers`` (and ``peft``) can be imported."""
    try:
        import peft  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def build(name: str, **kwargs: Any) -> Case:
    """Build case ``name`` (a key of ``BUILDERS``); kwargs: batch, seq, labels, seed."""
    try:
        builder = BUILDERS[name]
    except KeyError:
        raise ValueError(f"HF model name must be one of {sorted(BUILDERS)}, got {name!r}") from None
    return builder(**kwargs)


CASES: list[tuple[str, bool]] = [(name, labels) for name in BUILDERS for labels in (True, False)]


def cases(batch: int = BATCH, seq: int = SEQ, seed: int = 0) -> Iterator[Case]:
    """Every case the estimate-accuracy scenario runs, built one at a time: each model with
    its loss inside (``labels``) and outside (``loss_fn``); ``case.meta["labels"]`` says which.
    Measure one with ``memscale.testing.measure.measured_step_peak(case.model, case.inputs,
    loss_fn=case.loss_fn, autocast=case.autocast)`` and profile it with
    ``profile_dict(case.model, case.inputs, autocast=case.autocast)``."""
    for name, labels in CASES:
        case = build(name, batch=batch, seq=seq, labels=labels, seed=seed)
        case.meta["labels"] = labels
        yield case


def accuracy_records(predict: Callable[[dict[str, Any]], tuple[int, str]], batch: int = BATCH, seq: int = SEQ,
                     scenario: str = "estimate_accuracy") -> list[dict[str, Any]]:
    """One estimate-accuracy record per case of :func:`cases` (the scenario's format):
    ``predict(graph) -> (predicted bytes, predictor)`` against the measured step peak."""
    from ..profiler.profile import profile_dict
    from .measure import measured_step_peak

    records = []
    for case in cases(batch=batch, seq=seq):
        label = f"{case.name}/{'loss_inside' if case.meta['labels'] else 'loss_outside'}"
        graph = profile_dict(case.model, case.inputs, training=True, optimizer="adamw", autocast=case.autocast)
        # torch's default AdamW for the device: the per-tensor one the CPU memory model assumes
        measured = measured_step_peak(case.model, case.inputs, loss_fn=case.loss_fn, autocast=case.autocast,
                                      foreach=None)
        predicted, predictor = predict(graph)
        error = (predicted - measured) / measured
        records.append({
            "scenario": scenario, "model": f"hf_{case.name}", "batch": batch, "label": label,
            "predicted": int(predicted), "measured": int(measured), "error": round(error, 6),
            "ratios": {"abs_error": round(abs(error), 6)}, "predictor": predictor,
            "layers": len(graph["layers"]),
        })
        del case
    return records
