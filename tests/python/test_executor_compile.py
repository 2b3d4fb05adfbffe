"""torch.compile of a model with a plan applied runs a training step with equal gradients.

Checkpointing and tiling are traced by dynamo (torch's checkpoint is supported there;
the buffer guard and in-place check are skipped while compiling). Activation-offloaded
layers run eagerly (graph break) so their saved-tensor hooks really apply.
"""
from __future__ import annotations

import pytest
import torch

from executor_testlib import build, layer, layer_names, mlp_names, twin
from memscale.runtime.training import apply_plan


def test_compiled_step_with_every_technique(tmp_path) -> None:
    torch._dynamo.reset()
    model, inputs = build("gpt", dropout=0.0)
    ref = twin(model)
    blocks = [n for n in layer_names(model) if n.startswith("blocks.")]
    plan = {"layers": [layer(blocks[0], ["checkpoint"]),
                       layer(blocks[1], ["offload_activations"], tier="disk"),
                       layer("head", ["tile"], kind="lm_head", chunks=2)]
            + [layer(n, ["tile"], kind="mlp", chunks=2) for n in mlp_names(model, ["mlp"])]}
    with apply_plan(model, plan, offload_dir=tmp_path, min_offload_bytes=0) as handle:
        compiled = torch.compile(model)
        written = []
        real = handle.store._pack

        def spy(group, t):
            packed = real(group, t)
            written.append(packed is not t)
            return packed
        handle.store._pack = spy
        for p in model.parameters():
            p.grad = None
        torch.manual_seed(0)
        compiled(*inputs).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        assert any(written)  # the offloaded block really went to disk
        assert list(handle.store._session_dir.iterdir()) == []
        for p in ref.parameters():
            p.grad = None
        torch.manual_seed(0)
        ref(*inputs).backward()
        for g, p in zip(grads, ref.parameters()):
            assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-6)
    torch._dynamo.reset()


TECHNIQUE_PLANS = {
    "checkpoint": lambda blocks, mlps: [layer(b, ["checkpoint"]) for b in blocks],
    "offload": lambda blocks, mlps: [layer(b, ["offload_activations"], tier="disk") for b in blocks],
    "tile_head": lambda blocks, mlps: [layer("head", ["tile"], kind="lm_head", chunks=2)],
    "tile_mlp": lambda blocks, mlps: [layer(n, ["tile"], kind="mlp", chunks=2) for n in mlps],
}


@pytest.mark.parametrize("technique", sorted(TECHNIQUE_PLANS))
def test_compiled_step_with_one_technique(technique: str, tmp_path) -> None:
    """Each technique alone under torch.compile: which one breaks, if any, is named."""
    torch._dynamo.reset()
    model, inputs = build("gpt", dropout=0.0)
    ref = twin(model)
    blocks = [n for n in layer_names(model) if n.startswith("blocks.")]
    plan = {"layers": TECHNIQUE_PLANS[technique](blocks, mlp_names(model, ["mlp"]))}
    with apply_plan(model, plan, offload_dir=tmp_path, min_offload_bytes=0):
        compiled = torch.compile(model)
        torch.manual_seed(0)
        compiled(*inputs).backward()
        grads = [p.grad.clone() for p in model.parameters()]
    torch.manual_seed(0)
    ref(*inputs).backward()
    for (name, p), g in zip(ref.named_parameters(), grads):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-6), f"{technique}: grad of {name}"
    torch._dynamo.reset()
