"""Each technique forced on every eligible layer: loss, gradients and buffers unchanged.

fp32, rtol 1e-5 (see executor_testlib.close), same RNG seed for both models, dropout
enabled where the model has it (MLP tiling excepted: see test_tile_mlp_every_block).
"""
from __future__ import annotations

import pytest
import torch

from executor_testlib import (ZOO, assert_same_step, build, checkpointable, layer, layer_names,
                             mlp_names, twin)
from memscale.runtime.training import apply_plan

MODELS = ["gpt", "vit", "resnet", "t5", "encoder", "llama", "lstm"]


@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_every_layer(name: str) -> None:
    model, inputs = build(name)
    ref = twin(model)
    plan = {"layers": [layer(n, ["checkpoint"]) for n in checkpointable(model, layer_names(model))]}
    with apply_plan(model, plan):
        assert_same_step(model, ref, inputs)
        assert_same_step(model, ref, inputs)  # second step: buffers (BatchNorm) still in sync


@pytest.mark.parametrize("name", MODELS)
def test_offload_every_layer_to_disk(name: str, tmp_path) -> None:
    model, inputs = build(name)
    ref = twin(model)
    plan = {"layers": [layer(n, ["offload_activations"], tier="disk") for n in layer_names(model)]}
    with apply_plan(model, plan, offload_dir=tmp_path, min_offload_bytes=0) as handle:
        assert_same_step(model, ref, inputs)
        session = handle.store._session_dir
        assert session is not None and session.parent == tmp_path
        assert list(session.iterdir()) == []  # every file removed once backward used it
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_and_offload_every_layer(name: str, tmp_path) -> None:
    """Both on each layer: the checkpoint boundaries go to disk."""
    model, inputs = build(name)
    ref = twin(model)
    names = layer_names(model)
    plan = {"layers": [layer(n, ["checkpoint", "offload_activations"] if n in
                             checkpointable(model, [n]) else ["offload_activations"], tier="disk")
                       for n in names]}
    with apply_plan(model, plan, offload_dir=tmp_path, min_offload_bytes=0):
        assert_same_step(model, ref, inputs)


@pytest.mark.parametrize("name", MODELS)
def test_tile_head_and_loss(name: str) -> None:
    model, inputs = build(name)
    ref = twin(model)
    head = ZOO[name][1]
    plan = {"layers": [layer(head, ["tile"], kind="lm_head", chunks=3)]}
    with apply_plan(model, plan):
        assert_same_step(model, ref, inputs)


@pytest.mark.parametrize("name", [n for n in MODELS if ZOO[n][2]])
def test_tile_mlp_every_block(name: str) -> None:
    # Dropout off: a tiled MLP draws its dropout mask per slice (documented in tiling.py).
    model, inputs = build(name, dropout=0.0)
    ref = twin(model)
    mlps = mlp_names(model, ZOO[name][2])
    assert mlps
    plan = {"layers": [layer(n, ["tile"], kind="mlp", chunks=4) for n in mlps]}
    with apply_plan(model, plan):
        assert_same_step(model, ref, inputs)


@pytest.mark.parametrize("name", ["gpt", "vit", "t5", "llama"])
def test_everything_at_once(name: str, tmp_path) -> None:
    """Blocks checkpointed, MLPs inside them tiled, other layers offloaded, head+loss tiled."""
    model, inputs = build(name, dropout=0.0)
    ref = twin(model)
    style, head, suffixes = ZOO[name]
    layers = []
    for n in layer_names(model):
        if n == head:
            layers.append(layer(n, ["tile", "offload_activations"], kind="lm_head", chunks=2,
                                tier="disk"))
        elif any(m.startswith(n + ".") for m in mlp_names(model, suffixes)):
            layers.append(layer(n, ["checkpoint"]))
        else:
            layers.append(layer(n, ["offload_activations"], tier="disk"))
    layers += [layer(n, ["tile"], kind="mlp", chunks=3) for n in mlp_names(model, suffixes)]
    with apply_plan(model, {"layers": layers}, offload_dir=tmp_path, min_offload_bytes=0):
        assert_same_step(model, ref, inputs)


def test_many_steps_with_sgd(tmp_path) -> None:
    """Parameters stay equal over several optimizer steps with every technique on.

    SGD, not Adam: Adam divides each gradient by its own running RMS, which turns the
    rounding noise of mathematically-zero gradients (attention key biases) into full
    ±lr steps, so parameters would differ without any gradient differing by more than
    1e-10."""
    model, inputs = build("gpt")
    ref = twin(model)
    plan = {"layers": [layer(n, ["checkpoint", "offload_activations"], tier="disk")
                       for n in layer_names(model) if n.startswith("blocks.")]
            + [layer("head", ["tile"], kind="lm_head", chunks=4)]}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    with apply_plan(model, plan, offload_dir=tmp_path, min_offload_bytes=0):
        for i in range(3):
            assert_same_step(model, ref, inputs)
            opt.step()
            opt_ref.step()
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6), n


@pytest.mark.parametrize("name", ["gpt", "vit", "resnet", "t5"])
def test_profiled_layers_every_technique(name: str, tmp_path) -> None:
    """Layers, kinds and tileable axes from memscale.profile: checkpoint + disk offload on
    every layer that takes them, tile on every layer the profiler marks tileable."""
    from memscale.profiler.profile import profile_dict

    model, inputs = build(name, dropout=0.1)
    ref = twin(model)
    graph = profile_dict(model, inputs)
    layers = []
    for g in graph["layers"]:
        techniques = ["offload_activations"]
        if g["name"] in checkpointable(model, [g["name"]]):
            techniques.append("checkpoint")
        if g["tileable"]:
            techniques.append("tile")
        layers.append({**layer(g["name"], techniques, kind=g["kind"], chunks=2, tier="disk"),
                       "index": g["index"]})
    assert any("tile" in entry["techniques"] for entry in layers)
    with apply_plan(model, {"layers": layers}, offload_dir=tmp_path, min_offload_bytes=0):
        assert_same_step(model, ref, inputs)
