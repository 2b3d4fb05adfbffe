"""A plan the C++ planner made (memscale::plan_blocks on the libtorch GPT of
examples/cpp/tiny_gpt.hpp; tests/cpp/torch/test_blocks_json.cpp checks that the committed
file is what it makes) parses in Python and applies to the GPT's PyTorch twin with the
plain module's gradients."""
import importlib.util
import pathlib

import torch

import memscale
from memscale.runtime.hooks import is_patched
from memscale.runtime.training.apply import apply_plan

DATA = pathlib.Path(__file__).resolve().parents[1] / "data"


def _twin_module():
    spec = importlib.util.spec_from_file_location("make_blocks_plan_fixture", DATA / "make_blocks_plan_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _grads(model, ids, targets):
    logits = model(ids)
    torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)).backward()
    out = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return out


def test_cpp_plan_parses_and_applies_to_the_pytorch_twin():
    plan = memscale.Plan.from_json((DATA / "plans" / "cpp_gpt_blocks.json").read_text())
    names = [layer.name for layer in plan.layers]
    assert names == ["blocks:before", "blocks.0", "blocks.1", "blocks.2", "blocks:after"]
    checkpointed = [layer.name for layer in plan.layers if layer.has("checkpoint")]
    assert checkpointed and all(name.startswith("blocks.") for name in checkpointed)
    assert plan.training and plan.budget_bytes > 0

    torch.manual_seed(0)
    model = _twin_module().Gpt()
    ids, targets = torch.randint(128, (4, 32)), torch.randint(128, (4, 32))
    plain = _grads(model, ids, targets)
    handle = apply_plan(model, plan)
    try:
        assert [f"blocks.{i}" for i, b in enumerate(model.blocks) if is_patched(b)] == checkpointed
        ours = _grads(model, ids, targets)
    finally:
        handle.remove()
    for a, b in zip(plain, ours):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
