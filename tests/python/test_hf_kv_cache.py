"""Hugging Face causal LMs: dims read from their configs, and their KV cache on the planned
tiers (host, disk) under ``model.generate`` and ``memscale.offload.generate``."""
from __future__ import annotations

import gc
import json
import os
import stat
from types import SimpleNamespace

import pytest
import torch

import memscale
from memscale.profiler.introspect import model_dims
from memscale.runtime.inference import memory_model
from memscale.runtime.inference.kv_cache import TierRows

transformers = pytest.importorskip("transformers")
from memscale.runtime.inference.hf_cache import TieredCache, tiered_cache  # noqa: E402


def _llama(layers=2):
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=1000, max_position_embeddings=128)).eval()


def _qwen2():
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=1000, max_position_embeddings=128)).eval()


def _gpt2(layers=2):
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=64, n_layer=layers, n_head=4, vocab_size=1000, n_positions=128, bos_token_id=0, eos_token_id=0)).eval()


FAMILIES = {"llama": _llama, "qwen2": _qwen2, "gpt2": _gpt2}


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    torch.manual_seed(0)
    return request.param, FAMILIES[request.param]()


def _ids(batch=2, prompt=7):
    return torch.randint(1, 1000, (batch, prompt), generator=torch.Generator().manual_seed(3))


def _reference(model, ids, n=8):
    return model.generate(ids, max_new_tokens=n, do_sample=False)


class _FileSpy:
    """Records every KV file (path, mode) the disk tier writes while active."""

    def __init__(self, monkeypatch):
        self.seen: dict[str, int] = {}
        original = TierRows.append

        def append(rows_self, rows):
            original(rows_self, rows)
            path = rows_self.file()
            if path is not None:
                self.seen[path] = stat.S_IMODE(os.stat(path).st_mode)

        monkeypatch.setattr(TierRows, "append", append)

    def check(self, expected_files):
        assert len(self.seen) == expected_files
        assert set(self.seen.values()) <= {0o600}
        gc.collect()
        assert not [p for p in self.seen if os.path.exists(p)], "KV files left behind"


# -- dims ------------------------------------------------------------------------------

def test_model_dims_reads_config_aliases():
    gpt2 = model_dims(SimpleNamespace(n_embd=64, n_head=4, n_layer=2, vocab_size=1000, n_positions=128, n_inner=256))
    assert (gpt2.hidden, gpt2.intermediate, gpt2.heads, gpt2.kv_heads, gpt2.head_dim, gpt2.max_positions,
            gpt2.layers) == (64, 256, 4, 4, 16, 128, 2)
    t5 = model_dims(SimpleNamespace(d_model=32, d_ff=64, num_heads=2, d_kv=8, num_layers=3, vocab_size=10))
    assert (t5.hidden, t5.intermediate, t5.heads, t5.head_dim, t5.kv_width) == (32, 64, 2, 8, 16)
    assert model_dims(SimpleNamespace()).hidden == 0


def test_inference_graph_dims_from_hf_configs(family):
    name, model = family
    cfg = model.config
    ids = _ids(1, 16)
    graph = json.loads(memscale.profile(model, (ids,), training=False).to_json())
    blocks = [layer for layer in graph["layers"] if layer["kind"] == "block"]
    assert len(blocks) == model_dims(model).layers
    dims = model_dims(model)
    assert dims.hidden == 64 and dims.vocab == 1000 and dims.max_positions == 128
    assert graph["max_positions"] == 128  # caps the reservation's tokens per step
    for layer in blocks:
        assert layer["dims"]["heads"] == dims.heads == 4
        assert layer["dims"]["intermediate"] == (128 if name != "gpt2" else 256)  # GPT-2: 4 x n_embd (Conv1D)
        assert layer["kv_cache_bytes"] == 2 * 1 * 16 * dims.kv_width * 4
    assert dims.kv_width == (2 if name != "gpt2" else 4) * 16
    plan = json.loads(memscale.plan(memscale.profile(model, (ids,), training=False),
                                    memscale.Config(memory_budget="1GiB", force_optimize=True)).to_json())
    assert plan["reservation"]["source"] != "flat_fallback"
    assert plan["reservation"]["widest_buffer"] == max(dims.hidden, dims.intermediate)
    # the serving memory model reads the same dims
    assert memory_model.kv_bytes_per_token(model) == 2 * dims.layers * dims.kv_width * 4
    assert memory_model.widest_buffer(model) == max(dims.hidden, dims.intermediate)
    del cfg


def test_reservation_is_flat_only_without_dims():
    model = torch.nn.Sequential(torch.nn.Tanh())
    graph = memscale.profile(model, (torch.randn(2, 3),), training=False)
    plan = json.loads(memscale.plan(graph, memscale.Config(memory_budget="1GiB", force_optimize=True)).to_json())
    assert plan["reservation"]["source"] in ("flat_fallback", "flat_cap") or plan["reservation"]["widest_buffer"] > 0


# -- the KV cache on tiers ---------------------------------------------------------------

@pytest.mark.parametrize("split,tiers", [({"gpu": 0, "cpu": 0}, "disk"), ({"gpu": 50, "cpu": 0}, "half"),
                                         ({"gpu": 0, "cpu": 100}, "host")])
def test_tiered_cache_generate_identical(family, split, tiers, tmp_path, monkeypatch):
    name, model = family
    ids = _ids()
    ref = _reference(model, ids)
    spy = _FileSpy(monkeypatch)
    cache = tiered_cache(model, {"kv_cache": split}, str(tmp_path))
    n = len(cache.layer_tiers)
    expected = {"disk": ["disk"] * n, "half": ["device"] * round(n / 2) + ["disk"] * (n - round(n / 2)),
                "host": ["device"] * n}[tiers]  # on a CPU-only machine the host is the device
    assert cache.layer_tiers == expected
    out = model.generate(ids, max_new_tokens=8, do_sample=False, cache=cache)
    assert torch.equal(out, ref)
    assert cache.get_seq_length() == ids.shape[1] + 7
    cache.close()
    spy.check(2 * expected.count("disk"))
    assert os.listdir(tmp_path) == []


def test_offload_generate_hf_on_disk_identical(family, tmp_path, monkeypatch):
    name, model = family
    ids = _ids()
    ref = _reference(model, ids)
    spy = _FileSpy(monkeypatch)
    r = memscale.offload.generate(model, ids, 8, tiers={"kv_cache": {"gpu": 0, "cpu": 0}}, disk_dir=str(tmp_path),
                                  return_logits=True)
    assert torch.equal(r.tokens, ref)
    assert r.kv_layer_tiers == ["disk"] * model_dims(model).layers
    assert r.kv_bytes["disk"] == 2 * ids.shape[0] * (ids.shape[1] + 7) * model_dims(model).kv_width * 4 \
        * model_dims(model).layers
    spy.check(2 * model_dims(model).layers)
    assert os.listdir(tmp_path) == []


def test_offload_generate_hf_refuses_activation_tiers():
    model = _llama()
    with pytest.raises(memscale.ConfigError, match="tiers.activations"):
        memscale.offload.generate(model, _ids(), 2, tiers={"activations": {"gpu": 0, "cpu": 0}})


def _mixed_kv_budget(graph, kv_layer_bytes):
    """The first budget below the unoptimized peak (in half-layer steps of KV cache) at
    which the engine, weights kept resident, puts some layers' KV cache on disk and keeps
    others on the device."""
    cfg = dict(force_optimize=True, techniques={"offload_weights": "off"})
    peak = memscale.plan(graph, memscale.Config(memory_budget="1GiB", **cfg)).unoptimized_peak_bytes
    for halves in range(1, 16):
        budget = peak - halves * kv_layer_bytes // 2
        tiers = {layer.kv_tier for layer in memscale.plan(graph, memscale.Config(memory_budget=budget, **cfg)).layers}
        if {"device", "disk"} <= tiers:
            return budget
    raise AssertionError("no budget splits the KV cache between the device and disk")


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_engine_plans_each_layers_kv_tier_and_the_cache_follows_it(name, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = {"llama": _llama, "gpt2": _gpt2}[name](layers=4)
    ids, new = _ids(), 8
    ref = _reference(model, ids, new)
    total = torch.cat([ids, ids[:, :new]], dim=1)  # example inputs of the generation's total length
    graph = memscale.profile(model, (total,), training=False)
    kv = max(layer["kv_cache_bytes"] for layer in json.loads(graph.to_json())["layers"])
    cfg = memscale.Config(memory_budget=_mixed_kv_budget(graph, kv), force_optimize=True,
                          techniques={"offload_weights": "off"}, offload={"disk_dir": str(tmp_path)})
    memscale.wrap(model, cfg, example_inputs=(total,), training=False)
    try:
        handle = memscale.runtime.inference.handle_of(model)
        planned = [layer.kv_tier for layer in handle.plan.layers if layer.kv_tier != "none"]
        assert len(planned) == model_dims(model).layers and {"device", "disk"} <= set(planned)
        assert handle.kv_hook.layer_tiers == planned
        spy = _FileSpy(monkeypatch)
        out = model.generate(ids, max_new_tokens=new, do_sample=False)  # Hugging Face's own generate
        assert torch.equal(out, ref)
        spy.check(2 * planned.count("disk"))
        r = memscale.offload.generate(model, ids, new)
        assert torch.equal(r.tokens, ref) and r.kv_layer_tiers == planned
        assert r.kv_bytes["disk"] > 0 and r.kv_bytes["device"] > 0
    finally:
        memscale.unwrap(model)
    assert os.listdir(tmp_path) == []


def test_a_plan_with_other_kv_layers_is_refused_before_anything_is_written(tmp_path):
    from memscale.runtime.inference import wrap_for_inference

    cfg = memscale.Config(memory_budget="64MiB", offload={"disk_dir": str(tmp_path)},
                          tiers={"kv_cache": {"gpu": 50, "cpu": 0}})
    other = memscale.plan(memscale.profile(_llama(layers=4), (_ids(),), training=False), cfg)
    model = _llama()
    with pytest.raises(memscale.MemScaleError, match="plan: 4 layers hold a KV cache .* caches 2 layers"):
        wrap_for_inference(model, cfg, plan=other)
    assert os.listdir(tmp_path) == [] and memscale.runtime.inference.handle_of(model) is None


def test_inference_activations_off_the_device_are_the_engines_config_error(tmp_path):
    model = _llama()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = memscale.Config(memory_budget="64MiB", offload={"disk_dir": str(tmp_path)},
                          tiers={"activations": {"gpu": 50, "cpu": 50}})
    with pytest.raises(memscale.ConfigError, match=r'tiers.activations: got \{"gpu": 50, "cpu": 50\}.*allowed: gpu 100'):
        memscale.wrap(model, cfg, example_inputs=(_ids(),), training=False)
    assert os.listdir(tmp_path) == [] and memscale.runtime.inference.handle_of(model) is None
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_wrapped_model_generate_uses_tiered_cache_with_weight_paging(name, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = FAMILIES[name]()
    ids = _ids()
    ref = _reference(model, ids)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    cfg = memscale.Config(memory_budget="64MiB", offload={"policy": "budget", "ram_bytes": weights,
                                                          "disk_dir": str(tmp_path)},
                          tiers={"kv_cache": {"gpu": 0, "cpu": 0}})
    memscale.wrap(model, cfg, example_inputs=(ids,), training=False)
    try:
        spy = _FileSpy(monkeypatch)
        out = model.generate(ids, max_new_tokens=8, do_sample=False)  # Hugging Face's own generate
        assert torch.equal(out, ref)
        spy.check(2 * model_dims(model).layers)
        r = memscale.offload.generate(model, ids, 8)
        assert torch.equal(r.tokens, ref) and r.kv_layer_tiers == ["disk"] * model_dims(model).layers
        # the caller's own empty DynamicCache is placed in place: it keeps the tokens
        own = transformers.DynamicCache(config=model.config)
        out = model(ids, cache=own, use_cache=True)
        assert out.cache is own and own.get_seq_length() == ids.shape[1] and own.layer_tiers[0] == "disk"
        nxt = out.logits[:, -1:].argmax(-1)
        step = model(nxt, cache=own, use_cache=True)
        assert own.get_seq_length() == ids.shape[1] + 1
        full = torch.cat([ids, nxt], dim=1)
        assert torch.equal(step.logits[:, -1].argmax(-1), model(full, use_cache=False).logits[:, -1].argmax(-1))
        # a cache already holding tokens (or of another class) is left alone
        held = transformers.DynamicCache(config=model.config)
        memscale.unwrap(model)
        model(ids, cache=held, use_cache=True)
        memscale.wrap(model, cfg, example_inputs=(ids,), training=False)
        model(nxt, cache=held, use_cache=True)
        assert all(type(layer) is transformers.DynamicLayer for layer in held.layers)
        # no cache wanted: none made
        assert model(ids, use_cache=False).cache is None
    finally:
        memscale.unwrap(model)
    assert [f for f in os.listdir(tmp_path) if "kv" in f] == []
    # unwrapped: Hugging Face's own cache again
    assert type(model(ids, use_cache=True).cache) is transformers.DynamicCache


def test_tiered_cache_crop_and_reorder():
    model = _llama()
    ids = _ids()
    cache = tiered_cache(model, {"kv_cache": {"gpu": 0, "cpu": 0}})
    ref = transformers.DynamicCache(config=model.config)
    model(ids, cache=cache, use_cache=True)
    model(ids, cache=ref, use_cache=True)
    assert isinstance(cache, TieredCache)
    for op in (lambda c: c.crop(-2), lambda c: c.reorder_cache(torch.tensor([1, 0])),
               lambda c: c.batch_repeat_interleave(2), lambda c: c.batch_select_indices(torch.tensor([0, 3]))):
        op(cache)
        op(ref)
        for mine, theirs in zip(cache.layers, ref.layers):
            assert torch.equal(mine.keys, theirs.keys) and torch.equal(mine.values, theirs.values)
        assert cache.get_seq_length() == ref.get_seq_length()
    cache.close()
    assert cache.files() == []
