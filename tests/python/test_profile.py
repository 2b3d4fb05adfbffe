"""memscale.profile: schema, untouched model, dedup, optimizer/grad bytes, inference, errors."""
import copy
import json

import pytest
import torch
from torch import nn

import memscale
from memscale.testing import models
from memscale.profiler.profile import profile_dict

GRAPH_KEYS = {"model_name", "dtype", "batch", "seq", "max_positions", "training", "optimizer", "optimizer_impl",
              "mixed_precision",
              "input_bytes", "largest_param_bytes", "trainable_param_bytes", "layers"}
LAYER_KEYS = {"index", "name", "kind", "param_bytes", "buffer_bytes", "grad_bytes", "optimizer_bytes",
              "activation_bytes", "retained_bytes", "receives_grad", "transient_bytes", "input_bytes", "output_bytes", "kv_cache_bytes", "flops",
              "dims", "tileable", "measured_peak_bytes", "measured_activation_bytes", "cannot"}
DIM_KEYS = {"hidden", "intermediate", "heads", "vocab", "seq", "batch"}
KINDS = {"embedding", "attention", "mlp", "block", "norm", "lm_head", "conv", "recurrent", "other"}


def _gpt(**kw):
    m = models.build("gpt", n_layers=2, **kw)
    return m, models.example_inputs("gpt", m, batch=2, seq=16)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_exact_schema_and_binding_round_trip(name: str) -> None:
    m = models.build(name)
    g = profile_dict(m, models.example_inputs(name, m, batch=2))
    assert set(g) == GRAPH_KEYS
    assert [layer["index"] for layer in g["layers"]] == list(range(len(g["layers"])))
    for layer in g["layers"]:
        assert set(layer) == LAYER_KEYS and set(layer["dims"]) == DIM_KEYS
        assert layer["kind"] in KINDS
        assert set(layer["tileable"]) <= {"seq", "batch"}
        assert all(isinstance(v, int) and v >= 0 for k, v in layer.items() if k.endswith("_bytes") or k == "flops")
    # every parameter counted exactly once
    assert sum(layer["param_bytes"] for layer in g["layers"]) == sum(
        p.numel() * p.element_size() for p in m.parameters())
    graph = memscale.ModelGraph.from_json(json.dumps(g))
    assert json.loads(graph.to_json()) == g
    assert memscale.profile(m, models.example_inputs(name, m, batch=2)) == graph


def _snapshot(m: nn.Module) -> dict:
    return {
        "params": [(id(p), p.detach().clone(), p.requires_grad, None if p.grad is None else p.grad.clone())
                   for p in m.parameters()],
        "buffers": [(id(b), b.clone()) for b in m.buffers()],
        "flags": [mod.training for mod in m.modules()],
        "hooks": [(len(mod._forward_hooks), len(mod._forward_pre_hooks), len(mod._backward_hooks))
                  for mod in m.modules()],
        "storages": [p.untyped_storage().data_ptr() for p in m.parameters()],
    }


def _same(a: dict, b: dict) -> bool:
    def eq(x, y):
        return x is None and y is None or (x is not None and y is not None and torch.equal(x, y))
    return (a["flags"] == b["flags"] and a["hooks"] == b["hooks"] and a["storages"] == b["storages"]
            and all(i == j and eq(p, q) and r == s and eq(g, h)
                    for (i, p, r, g), (j, q, s, h) in zip(a["params"], b["params"]))
            and all(i == j and torch.equal(x, y) for (i, x), (j, y) in zip(a["buffers"], b["buffers"])))


@pytest.mark.parametrize("measure", [False, True])
@pytest.mark.parametrize("name", ["gpt", "resnet"])
def test_model_is_left_untouched(name: str, measure: bool) -> None:
    small = {"gpt": dict(n_layers=2, max_seq=32), "resnet": dict(layers=(1, 1, 1, 1), image_size=16)}[name]
    m = models.build(name, **small)
    inputs = models.example_inputs(name, m, batch=2)
    m(*inputs).backward()  # existing gradients and (for resnet) updated BatchNorm stats
    m.eval()
    next(m.children()).train()  # mixed flags must come back as they were
    before = _snapshot(m)
    rng = torch.get_rng_state()
    profile_dict(m, inputs, measure=measure)
    assert _same(before, _snapshot(m))
    assert torch.equal(rng, torch.get_rng_state())


def test_storage_saved_twice_counts_once() -> None:
    class TwoUses(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.lin(x)
            return h.sin() + h.cos()  # sin and cos both save h

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = TwoUses()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x).sum()

    g = profile_dict(Net(), torch.randn(4, 8), measure=True)
    (layer,) = g["layers"]
    h_bytes = 4 * 8 * 4
    # x (an input) and the weight (a parameter) are excluded; h counts once, not twice
    assert layer["activation_bytes"] == h_bytes
    assert layer["measured_activation_bytes"] == h_bytes


def test_grad_and_optimizer_bytes_per_optimizer() -> None:
    m, inputs = _gpt()
    m.wpe.weight.requires_grad_(False)  # frozen: no grads, no state
    expected = {"sgd": 0, "sgd_momentum": 1, "adam": 2, "adamw": 2}
    for opt, factor in expected.items():
        g = profile_dict(m, inputs, optimizer=opt)
        assert g["optimizer"] == opt
        for layer in g["layers"]:
            trainable = 0 if layer["name"] == "wpe" else layer["param_bytes"]
            assert layer["grad_bytes"] == trainable
            assert layer["optimizer_bytes"] == factor * trainable
    g = profile_dict(m, inputs, optimizer="adamw", mixed_precision=True)
    assert g["mixed_precision"] is True
    blk = next(layer for layer in g["layers"] if layer["name"] == "blocks.0")
    numel = sum(p.numel() for p in m.blocks[0].parameters())
    assert blk["optimizer_bytes"] == 2 * blk["param_bytes"] + 4 * numel


def test_inference_profile_has_kv_cache_and_no_training_state() -> None:
    m, (ids, _) = _gpt()
    g = profile_dict(m, (ids,), training=False)
    assert g["training"] is False and g["optimizer"] == "none"
    for layer in g["layers"]:
        assert layer["grad_bytes"] == layer["optimizer_bytes"] == layer["activation_bytes"] == 0
    blk = next(layer for layer in g["layers"] if layer["name"] == "blocks.0")
    cfg = m.config
    assert blk["kv_cache_bytes"] == 2 * 2 * 16 * cfg.d_model * 4
    assert blk["transient_bytes"] > 0
    head = next(layer for layer in g["layers"] if layer["kind"] == "lm_head")
    assert head["kv_cache_bytes"] == 0


def test_grouped_query_attention_kv_width() -> None:
    m = models.build("llama", num_attention_heads=4, num_key_value_heads=2)
    g = profile_dict(m, models.example_inputs("llama", m, batch=2, seq=8, labels=False), training=False)
    blk = next(layer for layer in g["layers"] if layer["kind"] == "block")
    head_dim = m.config.hidden_size // 4
    assert blk["kv_cache_bytes"] == 2 * 2 * 8 * (2 * head_dim) * 4
    assert blk["dims"]["heads"] == 4 and blk["dims"]["intermediate"] == m.config.intermediate_size


def test_gpt_dims_kinds_flops_and_tileable() -> None:
    m, inputs = _gpt()
    g = profile_dict(m, inputs)
    by_name = {layer["name"]: layer for layer in g["layers"]}
    assert [layer["name"] for layer in g["layers"]] == ["wte", "wpe", "drop", "blocks.0", "blocks.1", "ln_f", "head"]
    assert (g["batch"], g["seq"], g["dtype"], g["model_name"]) == (2, 16, "float32", "GPT")
    c = m.config
    blk = by_name["blocks.0"]
    assert blk["kind"] == "block" and blk["tileable"] == []
    assert blk["dims"] == {"batch": 2, "heads": 4, "hidden": c.d_model, "intermediate": c.d_ff, "seq": 16, "vocab": 0}
    tokens = 2 * 16
    # qkv + proj + fc1 + fc2 matmuls, plus the two attention matmuls (q k^T and p v)
    linear = 2 * tokens * (3 * c.d_model * c.d_model + c.d_model * c.d_model + 2 * c.d_model * c.d_ff)
    attention = 2 * 2 * 2 * c.n_heads * 16 * 16 * (c.d_model // c.n_heads)
    assert blk["flops"] == linear + attention
    head = by_name["head"]
    assert head["kind"] == "lm_head" and head["tileable"] == ["seq", "batch"]
    assert head["dims"]["vocab"] == c.vocab and head["flops"] == 2 * tokens * c.d_model * c.vocab
    assert by_name["wte"]["kind"] == "embedding" and by_name["wte"]["dims"]["vocab"] == c.vocab
    assert by_name["ln_f"]["kind"] == "norm"
    # the loss is glue after the head: its log-softmax (B*S*V floats) is saved in the head's layer
    assert head["activation_bytes"] >= tokens * c.vocab * 4
    assert head["input_bytes"] == tokens * c.d_model * 4
    assert head["output_bytes"] == tokens * c.vocab * 4


def test_meta_model_profiles_like_the_real_one() -> None:
    real = models.build("llama")
    with torch.device("meta"):
        meta = models.build("llama")
    inputs = models.example_inputs("llama", real, batch=2, seq=16)
    a, b = profile_dict(real, inputs), profile_dict(meta, inputs)
    assert a == b
    assert all(p.is_meta for p in meta.parameters())
    with pytest.raises(ValueError, match="meta"):
        profile_dict(meta, inputs, measure=True)


def test_bad_arguments_name_themselves() -> None:
    m, inputs = _gpt()
    with pytest.raises(ValueError, match=r"optimizer.*lion"):
        profile_dict(m, inputs, optimizer="lion")
    with pytest.raises(TypeError, match="training"):
        profile_dict(m, inputs, training="yes")
    with pytest.raises(TypeError, match="example_inputs"):
        profile_dict(m, 3)
    with pytest.raises(TypeError, match="model"):
        profile_dict("gpt", inputs)


def test_kwargs_inputs_and_deterministic_output() -> None:
    m, (ids, labels) = _gpt()
    a = profile_dict(m, {"input_ids": ids, "labels": labels})
    b = profile_dict(m, (ids, labels))
    assert a == b
    assert json.dumps(a, sort_keys=True) == json.dumps(profile_dict(copy.deepcopy(m), (ids, labels)), sort_keys=True)


def test_ties_aliases_and_rnn_weight_lists_survive_profiling() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.alias = self.emb  # one module under two names
            self.rnn = nn.LSTM(8, 8, batch_first=True)
            self.out = nn.Linear(8, 10, bias=False)
            self.out.weight = self.emb.weight  # tied

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.out(self.rnn(self.alias(ids))[0]).sum()

    m = Tied()
    named = [(n, p) for n, p in m.named_parameters(remove_duplicate=False)]
    flat = list(m.rnn._flat_weights)
    buffers = [(n, b) for n, b in m.named_buffers(remove_duplicate=False)]
    for measure in (False, True):
        profile_dict(m, torch.randint(0, 10, (2, 5)), measure=measure)
        assert [(n, p) for n, p in m.named_parameters(remove_duplicate=False)] == named
        assert all(a is b for (_, a), (_, b) in zip(m.named_parameters(remove_duplicate=False), named))
        assert m.out.weight is m.emb.weight and m.alias is m.emb
        assert all(a is b for a, b in zip(m.rnn._flat_weights, flat))
        assert all(a is b for (_, a), (_, b) in zip(m.named_buffers(remove_duplicate=False), buffers))


def test_value_dependent_forward_is_a_clear_error() -> None:
    class ValueDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x[x > 0].view(-1, 4)).sum()  # boolean mask: shape depends on values

    m = ValueDependent()
    before = [p for p in m.parameters()]
    with pytest.raises(memscale.MemScaleError, match="ValueDependent.forward cannot run on fake tensors"):
        profile_dict(m, torch.ones(2, 4))
    assert all(a is b for a, b in zip(m.parameters(), before)) and not m.lin._forward_hooks
