"""Issue 13, acceptance 1: ``wrap`` on Hugging Face models fits every budget it accepts.

For decoder-only (gpt2, llama, qwen2), encoder-decoder (t5), encoder (bert, vit) and
mixture-of-experts (mixtral) models built from configs (memscale.testing.hf_models), a
Llama with a LoRA adapter (peft; frozen base) and a Llama under bfloat16 autocast, each
with the loss inside (``labels``) and outside (the plain loop: ``out = model(**x); loss =
case.loss_fn(out)``): the sweep of budget_sweep.py, from 100% of the measured step peak
down to the stated minimum in 5% steps and at the minimum. Under bf16 autocast the wrapped
run is no further from an fp32 run than the unwrapped bf16 run.
"""
from __future__ import annotations

import pytest

from budget_sweep import sweep
from memscale.testing import hf_models

pytestmark = pytest.mark.skipif(not hf_models.available(), reason="transformers / peft not installed")

NAMES = ("gpt2", "llama", "qwen2", "t5", "bert", "mixtral", "vit", "llama_lora", "llama_bf16_autocast")
CASES = [(name, labels) for name in NAMES for labels in (True, False)]


@pytest.mark.parametrize("name, labels", CASES,
                         ids=[f"{name}-{'loss_inside' if labels else 'loss_outside'}" for name, labels in CASES])
def test_wrap_fits_every_budget_it_accepts_down_to_the_stated_minimum(name: str, labels: bool) -> None:
    result = sweep(lambda: hf_models.build(name, labels=labels))
    print(f"\n{name}/{'loss_inside' if labels else 'loss_outside'}: {result}")
