"""apply_plan is reversible and refuses bad plans before touching the model."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from executor_testlib import (ZOO, build, checkpointable, layer, layer_names, mlp_names,
                              module_state, step)
from memscale.errors import MemScaleError
from memscale.errors import ExecutorError
from memscale.runtime.training import active_handle, apply_plan


def _full_plan(model: nn.Module, name: str) -> dict:
    head = ZOO[name][1]
    names = layer_names(model)
    layers = [layer(n, ["checkpoint", "offload_activations"] if n in checkpointable(model, [n])
                    else ["offload_activations"], tier="disk") for n in names if n != head]
    layers.append(layer(head, ["tile"], kind="lm_head", chunks=2))
    layers += [layer(n, ["tile"], kind="mlp", chunks=2) for n in mlp_names(model, ZOO[name][2])]
    return {"layers": layers}


@pytest.mark.parametrize("name", ["gpt", "resnet", "t5"])
def test_remove_restores_exactly(name: str, tmp_path) -> None:
    model, inputs = build(name)
    before = module_state(model)
    sd_before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    handle = apply_plan(model, _full_plan(model, name), offload_dir=tmp_path, min_offload_bytes=0)
    # state_dict keys and values are unchanged by applying a plan
    sd_applied = model.state_dict()
    assert list(sd_applied) == list(sd_before)
    assert all(torch.equal(sd_applied[k], v) for k, v in sd_before.items())
    assert module_state(model) != before  # something was installed
    step(model, inputs)
    handle.remove()
    after = module_state(model)
    assert after == before
    assert [id(p) for p in model.parameters()] == params
    assert active_handle(model) is None
    assert list(tmp_path.iterdir()) == []  # offload session directory removed
    handle.remove()  # idempotent


def test_remove_keeps_a_foreign_instance_forward() -> None:
    lin = nn.Linear(4, 4)
    original = lin.forward

    def foreign(x: torch.Tensor) -> torch.Tensor:
        return original(x) * 2
    lin.forward = foreign
    model = nn.Sequential(lin)
    handle = apply_plan(model, {"layers": [layer("0", ["checkpoint"])]})
    assert vars(lin)["forward"] is not foreign
    x = torch.randn(2, 4, requires_grad=True)
    assert torch.allclose(model(x), original(x) * 2)
    handle.remove()
    assert vars(lin)["forward"] is foreign


def test_plan_as_object_and_json_text() -> None:
    class LayerPlan:
        def __init__(self, name: str) -> None:
            self.name, self.kind, self.techniques = name, "block", ["checkpoint"]
            self.tile_chunks, self.activation_tier = 1, "device"

    class Plan:
        layers = [LayerPlan("0")]

    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh())
    apply_plan(model, Plan()).remove()
    text = json.dumps({"layers": [layer("0", ["checkpoint"])]})
    apply_plan(model, text).remove()


def test_apply_twice_refused() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh())
    handle = apply_plan(model, {"layers": [layer("0", ["checkpoint"])]})
    with pytest.raises(ExecutorError, match="already applied"):
        apply_plan(model, {"layers": [layer("1", ["checkpoint"])]})
    handle.remove()
    apply_plan(model, {"layers": [layer("1", ["checkpoint"])]}).remove()


def _refused(model: nn.Module, plan: object, match: str, **kwargs: object) -> None:
    before = module_state(model)
    with pytest.raises(ExecutorError, match=match) as info:
        apply_plan(model, plan, **kwargs)
    assert isinstance(info.value, MemScaleError)
    assert module_state(model) == before
    assert active_handle(model) is None


def test_bad_plans_raise_before_modifying() -> None:
    model, _ = build("gpt")
    ok = layer("blocks.0", ["checkpoint"])
    cases = [
        ([ok, layer("blocks.99", ["checkpoint"])], r"'blocks\.99'.*no submodule"),
        ([ok, layer("blocks.1", ["jit"])], r"unknown \['jit'\]"),
        ([ok, layer("blocks.1", ["offload_weights"])], "offload_weights"),
        ([ok, layer("blocks.1.attn", ["tile"], kind="mlp", chunks=2)], "depends on other positions"),
        ([ok, layer("blocks.1", ["tile"], kind="block", chunks=2)], "tiling applies"),
        ([ok, layer("blocks.1", ["offload_activations"], tier="host")], "already is host"),
        ([ok, layer("blocks.1", ["offload_activations"], tier="device")], "expected 'host'"),
        ([ok, layer("blocks.1", ["checkpoint"], chunks=0)], "tile_chunks"),
        ([ok, layer("blocks.1", ["checkpoint"], tier="gpu")], "activation_tier"),
        ([ok, ok], "repeats"),
        ([ok, layer("blocks.1.mlp.act", ["tile"], kind="mlp", chunks=2)], "cannot verify"),
        ([ok, layer("ln_f", ["tile"], kind="lm_head", chunks=2)], "without an nn.Linear"),
        ([ok, layer("head", ["tile"], kind="lm_head", chunks=2),
          layer("blocks.1.mlp", ["tile"], kind="lm_head", chunks=2)], "output heads"),
    ]
    for layers, match in cases:
        _refused(model, {"layers": layers}, match)
    _refused(model, {"nothing": []}, "has no 'layers'")
    _refused(model, "{not json", "not valid JSON")
    _refused(model, {"layers": [ok]}, "min_offload_bytes", min_offload_bytes=-1)


def test_tile_refuses_position_mixing_layers() -> None:
    conv = nn.Sequential(nn.Conv1d(4, 4, 3), nn.ReLU())
    _refused(nn.Sequential(conv), {"layers": [layer("0", ["tile"], kind="mlp", chunks=2)]},
             "Conv1d.*may mix")

    class CumSum(nn.Module):  # functional mixing the module tree cannot show
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x).cumsum(dim=-2)
    _refused(nn.Sequential(CumSum()), {"layers": [layer("0", ["tile"], kind="mlp", chunks=2)]},
             "depends on other positions")
    drop = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 4))
    model = nn.Sequential(drop).train()
    rng = torch.get_rng_state()
    apply_plan(model, {"layers": [layer("0", ["tile"], kind="mlp", chunks=2)]}).remove()
    assert all(m.training for m in model.modules())  # probe ran in eval, mode restored
    assert torch.equal(torch.get_rng_state(), rng)  # and did not consume the RNG
    bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    _refused(nn.Sequential(bn), {"layers": [layer("0", ["tile"], kind="mlp", chunks=2)]},
             "BatchNorm1d")


def test_checkpoint_refuses_inplace_module() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True))
    _refused(model, {"layers": [layer("1", ["checkpoint"])]}, r"inplace=True")


def test_checkpoint_detects_input_mutation_at_first_call() -> None:
    class Scale(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mul_(2)

    model = nn.Sequential(nn.Linear(4, 4), Scale())
    handle = apply_plan(model, {"layers": [layer("1", ["checkpoint"])]})
    with pytest.raises(ExecutorError, match="modified an input tensor in place"):
        model(torch.randn(2, 4))
    handle.remove()


def test_head_tiling_refused_without_labels() -> None:
    class NoLabels(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(4, 4)
            self.head = nn.Linear(4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

    _refused(NoLabels(), {"layers": [layer("head", ["tile"], kind="lm_head", chunks=2)]},
             "takes no `labels`")


def test_failure_while_installing_rolls_back(monkeypatch) -> None:
    from memscale.runtime.training import apply as apply_mod

    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3))
    before = module_state(model)
    real = apply_mod.ForwardPatch
    calls = []

    def flaky(module, make, name=""):
        calls.append(name)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(module, make, name=name)
    monkeypatch.setattr(apply_mod, "ForwardPatch", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        apply_plan(model, {"layers": [layer("0", ["checkpoint"]), layer("2", ["checkpoint"])]})
    assert module_state(model) == before
    assert active_handle(model) is None


def test_skipped_and_empty_plans_change_nothing() -> None:
    model = nn.Sequential(nn.Linear(3, 3))
    before = module_state(model)
    with apply_plan(model, {"skipped": True, "skip_reason": "tiny", "layers": [layer("0", [])]}):
        assert module_state(model) == before
    # a skipped plan is not applied even if it lists techniques
    with apply_plan(model, {"skipped": True, "layers": [layer("0", ["checkpoint"])]}):
        assert module_state(model) == before
    with apply_plan(model, {"layers": [layer("0", [])]}):
        assert module_state(model) == before


def test_core_plan_object_is_accepted() -> None:
    """The bound memscale.Plan (from its JSON) drives the executor like the dict does."""
    import memscale

    def lp(index: int, name: str, techniques: list, kind: str = "block", chunks: int = 1) -> dict:
        return {"index": index, "name": name, "kind": kind, "techniques": techniques,
                "tile_chunks": chunks, "weight_tier": "device", "activation_tier": "device",
                "pinned": False, "bytes_before": 0, "bytes_after": 0, "rules": [], "reasons": []}
    doc = {"mode": "auto", "training": True, "budget_bytes": 1, "device_count": 1,
           "unoptimized_peak_bytes": 1, "predicted_peak_bytes": 1, "pressure": 1.0,
           "skipped": False, "skip_reason": "", "rejected": [], "trace": [], "reservation": {},
           "tier_policy": {}, "offload": {"policy": "none", "ram_bytes": 0, "hot_set": [],
                                          "prefetch_n_ahead": 0},
           "layers": [lp(0, "blocks.0", ["checkpoint"]), lp(1, "blocks.1", []),
                      lp(2, "head", ["tile"], kind="lm_head", chunks=2)]}
    plan = memscale.Plan.from_json(json.dumps(doc))
    model, inputs = build("gpt")
    before = module_state(model)
    with apply_plan(model, plan) as handle:
        assert [p.name for p in handle.patches] == ["blocks.0", "head", ""]
        step(model, inputs)
    assert module_state(model) == before
