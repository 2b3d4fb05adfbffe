"""Offloaded inference: bit-identical outputs, the disk tier's files, exact unwrap, and
refused inputs that leave nothing behind."""
from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys
import textwrap

import pytest
import torch

import memscale
from memscale.runtime.inference import generate, handle_of, unwrap_inference, wrap_for_inference
from memscale.runtime.inference.units import paging_units
from pager_models import build_gpt, prompt

HERE = os.path.dirname(os.path.abspath(__file__))


def _cfg(disk_dir, ram_bytes, policy="pinned_hot_set", **extra):
    offload = {"policy": policy, "ram_bytes": ram_bytes, "disk_dir": str(disk_dir), **extra}
    return memscale.Config(offload=offload)


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _mapped_files():
    """(start, end, path) of the file mappings of this process, from the kernel's view."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and "memscale-" in parts[5]:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                out.append((lo, hi, parts[5]))
    return out


def _resident_paged_bytes(handle):
    """Bytes of paged parameters that own real memory: a storage whose data lies inside one
    of our file mappings is evicted. Measured from the pointers, not the pager's books."""
    maps = _mapped_files()
    total = 0
    for unit, pinned in zip(handle.units, [handle.pager.pinned(i) for i in range(len(handle.units))]):
        if pinned:
            continue
        seen = set()
        for p in unit.params.values():
            s = p.untyped_storage()
            if s._cdata in seen:
                continue
            seen.add(s._cdata)
            ptr = s.data_ptr()
            if not any(lo <= ptr < hi for lo, hi, _ in maps):
                total += s.nbytes()
    return total


@pytest.fixture
def gpt():
    model = build_gpt(n_layers=6)
    return model, prompt(model, 2, 16)


def test_forward_and_generation_are_bit_identical(tmp_path, gpt):
    model, ids = gpt
    ref = model(ids)
    ref_gen = generate(model, ids, 6, return_logits=True)
    before = _snapshot(model)
    wrap_for_inference(model, _cfg(tmp_path, "2.5MB", prefetch_n_ahead=2), (ids,))
    handle = handle_of(model)
    assert handle.stats()["evictions"] == 0 and handle.files()
    for _ in range(2):
        assert torch.equal(model(ids), ref)
    for tiers in (None, {"kv_cache": {"gpu": 50, "cpu": 0}}):
        out = generate(model, ids, 6, tiers=tiers, return_logits=True)
        assert torch.equal(out.tokens, ref_gen.tokens)
        assert all(torch.equal(a, b) for a, b in zip(out.logits, ref_gen.logits))
    assert out.kv_layer_tiers == ["device"] * 3 + ["disk"] * 3  # an override applies by position
    # The activations between layers stay on the device: the model's own forward holds them.
    with pytest.raises(memscale.ConfigError, match=r'tiers.activations: got \{"gpu": 0, "cpu": 0\}.*allowed: gpu 100'):
        generate(model, ids, 2, tiers={"activations": {"gpu": 0, "cpu": 0}})
    stats = handle.stats()
    assert stats["evictions"] > 0 and stats["prefetch_loads"] > 0
    assert stats["peak_resident_weight_bytes"] <= 2_500_000
    unwrap_inference(model)
    after = dict(model.named_parameters())
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    assert os.listdir(tmp_path) == []
    assert torch.equal(model(ids), ref)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_generation_with_a_kv_cache_matches_full_recompute(gpt):
    model, ids = gpt
    out = generate(model, ids, 5, return_logits=True)
    full = model(out.tokens[:, :-1])
    for k, logits in enumerate(out.logits):
        torch.testing.assert_close(logits, full[:, ids.shape[1] + k - 1], rtol=1e-4, atol=1e-5)
    assert torch.equal(out.logits[0], model(ids)[:, -1])  # the prefill is the model's own forward


def test_the_gpt_models_kv_cache_follows_the_plans_layers(tmp_path, gpt, monkeypatch):
    model, ids = gpt
    ref = generate(model, ids, 4, return_logits=True)
    import memscale.runtime.inference.kv_cache as kv

    files = []
    real = kv.DiskRows.__init__

    def spy(self, *a, **k):
        real(self, *a, **k)
        files.append(self.path)

    monkeypatch.setattr(kv.DiskRows, "__init__", spy)
    cfg = memscale.Config(memory_budget="1GiB", tiers={"kv_cache": {"gpu": 50, "cpu": 0}},
                          offload={"policy": "budget", "ram_bytes": "2.5MB", "disk_dir": str(tmp_path)})
    wrap_for_inference(model, cfg, (torch.cat([ids, ids[:, :4]], dim=1),))
    handle = handle_of(model)
    planned = [layer.kv_tier for layer in handle.plan.layers if layer.kv_tier != "none"]
    kv_layers = [layer.name for layer in handle.plan.layers if layer.kv_tier != "none"]
    assert kv_layers == [f"blocks.{i}" for i in range(6)]
    assert sorted(planned) == ["device"] * 3 + ["disk"] * 3
    out = generate(model, ids, 4, return_logits=True)
    assert out.kv_layer_tiers == planned  # the engine's per-layer choice, not the positional split
    assert torch.equal(out.tokens, ref.tokens)
    assert all(torch.equal(a, b) for a, b in zip(out.logits, ref.logits))
    assert len(files) == 2 * planned.count("disk") and not any(os.path.exists(f) for f in files)
    unwrap_inference(model)


def test_the_gpt_model_takes_a_transformers_cache(gpt):
    pytest.importorskip("transformers")
    model, ids = gpt
    assert torch.equal(model(ids, use_cache=False), model(ids))  # the plain call is unchanged
    out = model(ids[:, :-3], use_cache=True)
    assert out.past_key_values.get_seq_length() == ids.shape[1] - 3
    step = model(ids[:, -3:], past_key_values=out.past_key_values, use_cache=True)  # three new tokens at once
    torch.testing.assert_close(step.logits, model(ids)[:, -3:], rtol=1e-4, atol=1e-5)
    labels = ids.roll(-1, dims=1)
    assert torch.equal(model(ids, labels, use_cache=True).loss, model(ids, labels))


def test_resident_parameter_bytes_stay_within_ram_bytes(tmp_path, gpt):
    model, ids = gpt
    budget = 2_000_000
    wrap_for_inference(model, _cfg(tmp_path, budget, prefetch_n_ahead=1), (ids,))
    handle = handle_of(model)
    pinned = handle.stats()["pinned_bytes"]
    peaks = []
    hooks = [u.modules[0].register_forward_pre_hook(lambda *_: peaks.append(_resident_paged_bytes(handle)))
             for u in handle.units]
    try:
        generate(model, ids, 4)
        model(ids)
    finally:
        for h in hooks:
            h.remove()
    assert len(peaks) > 20
    assert max(peaks) + pinned <= budget
    assert max(peaks) > 0  # the measurement sees resident layers
    unwrap_inference(model)


def test_disk_files_are_safetensors_mode_0600_and_hold_the_weights(tmp_path, gpt):
    model, ids = gpt
    before = _snapshot(model)
    wrap_for_inference(model, _cfg(tmp_path, "2.5MB"), (ids,))
    handle = handle_of(model)
    files = handle.files()
    assert files and all(os.path.dirname(f) == str(tmp_path) for f in files)
    from safetensors import safe_open

    seen = set()
    for path in files:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with open(path, "rb") as f:
            head = f.read(16)
        assert not head.startswith(b"\x80") and not head.startswith(b"PK")  # neither pickle nor torch zip
        (n,) = struct.unpack("<Q", head[:8])
        with open(path, "rb") as f:
            header = json.loads(f.read(8 + n)[8:])
        assert header["__metadata__"]["format"] == "pt"
        with safe_open(path, "pt") as f:
            for key in f.keys():
                assert torch.equal(f.get_tensor(key), before[key]), key
                seen.add(key)
    paged = {n for u in handle.units for n in u.params if not handle.pager.pinned(handle.units.index(u))}
    assert seen == paged
    unwrap_inference(model)
    assert not any(os.path.exists(f) for f in files)


def test_raw_format_and_private_directory_are_removed(gpt):
    model, ids = gpt
    ref = model(ids)
    cfg = memscale.Config(offload={"policy": "budget", "ram_bytes": "3MB"})
    wrap_for_inference(model, cfg, (ids,), file_format="raw")
    handle = handle_of(model)
    private = handle.private_dir
    assert private and os.path.isdir(private)
    assert all(f.endswith(".bin") and stat.S_IMODE(os.stat(f).st_mode) == 0o600 for f in handle.files())
    assert torch.equal(model(ids), ref)
    unwrap_inference(model)
    assert not os.path.exists(private)


def test_files_are_removed_at_exit_without_unwrap(tmp_path):
    script = textwrap.dedent(f"""
        import sys, torch, memscale
        sys.path.insert(0, {HERE!r})
        from pager_models import build_gpt, prompt
        from memscale.runtime.inference import wrap_for_inference, handle_of
        m = build_gpt(n_layers=4)
        ids = prompt(m, 1, 8)
        wrap_for_inference(m, memscale.Config(offload={{"policy": "budget", "ram_bytes": "3MB",
                                                       "disk_dir": {str(tmp_path)!r}}}), (ids,))
        m(ids)
        print(len(handle_of(m).files()))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip().splitlines()[-1]) > 0
    assert os.listdir(tmp_path) == []


def test_evicted_parameters_stay_readable_outside_the_forward(tmp_path, gpt):
    model, ids = gpt
    before = _snapshot(model)
    wrap_for_inference(model, _cfg(tmp_path, "2.5MB"), (ids,))
    model(ids)
    state = model.state_dict()
    for name, value in before.items():
        assert torch.equal(state[name], value), name
    unwrap_inference(model)


def test_tied_embedding_and_head_are_one_unit(tmp_path):
    model = build_gpt(n_layers=4)
    model.head.weight = model.wte.weight
    ids = prompt(model, 2, 8)
    ref = model(ids)
    units = paging_units(model, (ids,))
    tied = [u for u in units if model.head in u.modules]
    assert len(tied) == 1 and model.wte in tied[0].modules and tied[0].kind == "embedding"
    wrap_for_inference(model, _cfg(tmp_path, "2MB"), (ids,))
    assert torch.equal(model(ids), ref)
    unwrap_inference(model)
    assert model.head.weight is model.wte.weight


def test_an_exception_inside_a_unit_releases_it(tmp_path, gpt):
    model, ids = gpt
    wrap_for_inference(model, _cfg(tmp_path, "2.5MB"), (ids,))
    with pytest.raises(IndexError):
        model(torch.full_like(ids, 10_000))  # out-of-vocab ids fail inside the embedding
    ref_ids = ids
    model(ref_ids)  # nothing stays held: the next forward runs within the budget
    assert handle_of(model).stats()["peak_resident_weight_bytes"] <= 2_500_000
    unwrap_inference(model)


# ---- refused inputs: a clear error, nothing written, model untouched -------------------

def _assert_untouched(model, before):
    assert handle_of(model) is None
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name])


def test_missing_directory(tmp_path, gpt):
    model, ids = gpt
    before = _snapshot(model)
    missing = tmp_path / "nope"
    with pytest.raises(memscale.ConfigError, match=r"offload.disk_dir: .*nope\" does not exist"):
        wrap_for_inference(model, _cfg(missing, "2.5MB"), (ids,))
    assert not missing.exists() and os.listdir(tmp_path) == []
    _assert_untouched(model, before)


def test_directory_that_is_a_file(tmp_path, gpt):
    model, ids = gpt
    before = _snapshot(model)
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(memscale.ConfigError, match="is not a directory"):
        wrap_for_inference(model, _cfg(target, "2.5MB"), (ids,))
    _assert_untouched(model, before)


def test_read_only_directory(tmp_path, gpt):
    model, ids = gpt
    before = _snapshot(model)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(memscale.ConfigError, match=r"is not writable \(mode 0555\)"):
            wrap_for_inference(model, _cfg(ro, "2.5MB"), (ids,))
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o755)
    _assert_untouched(model, before)


def test_full_directory(tmp_path, gpt, monkeypatch):
    model, ids = gpt
    before = _snapshot(model)
    import memscale.runtime.inference.pager as inference

    class Usage:
        total, used, free = 10 << 30, 10 << 30, 4096

    monkeypatch.setattr(inference.shutil, "disk_usage", lambda _p: Usage())
    # The engine sees the disk's free space (hardware detection) and finds no room to page to.
    with pytest.raises(memscale.ConfigError, match=r"no room below the device: disk \d+\.\d\d KiB free"):
        wrap_for_inference(model, _cfg(tmp_path, "2.5MB"), (ids,))
    assert os.listdir(tmp_path) == []
    _assert_untouched(model, before)


def test_budget_smaller_than_the_pinned_hot_set(tmp_path, gpt):
    model, ids = gpt
    before = _snapshot(model)
    units = paging_units(model, (ids,))
    hot = sum(u.bytes for u in units if u.kind in ("embedding", "lm_head"))
    with pytest.raises(memscale.ConfigError, match=rf"offload.ram_bytes: got {hot - 1} .* the pinned hot set "):
        wrap_for_inference(model, _cfg(tmp_path, hot - 1), (ids,))
    assert os.listdir(tmp_path) == []
    _assert_untouched(model, before)


def test_layer_larger_than_the_budget(tmp_path, gpt):
    model, ids = gpt
    before = _snapshot(model)
    with pytest.raises(memscale.ConfigError, match=r"offload.ram_bytes: got 100000 .*the largest paged layer \"blocks.0\""):
        wrap_for_inference(model, _cfg(tmp_path, 100_000, policy="budget"), (ids,))
    _assert_untouched(model, before)
    assert os.listdir(tmp_path) == []


def test_ram_bytes_above_memory_budget(tmp_path, gpt):
    model, ids = gpt
    cfg = memscale.Config(memory_budget="1MB", offload={"policy": "budget", "ram_bytes": "2MB",
                                                        "disk_dir": str(tmp_path)})
    with pytest.raises(memscale.ConfigError, match="offload.ram_bytes: got 2000000 .* more than memory_budget"):
        wrap_for_inference(model, cfg, (ids,))
    assert os.listdir(tmp_path) == []


def test_tier_percentages_over_100(tmp_path, gpt):
    model, ids = gpt
    with pytest.raises(memscale.ConfigError, match=r"tiers.kv_cache: gpu \+ cpu = 120 exceeds 100"):
        memscale.Config(tiers={"kv_cache": {"gpu": 70, "cpu": 50}})
    with pytest.raises(memscale.ConfigError, match=r"tiers.activations: gpu \+ cpu = 101 exceeds 100"):
        generate(model, ids, 2, tiers={"activations": {"gpu": 100, "cpu": 1}}, disk_dir=str(tmp_path))
    with pytest.raises(memscale.ConfigError, match=r"tiers.kv_cache.gpu: got 120"):
        generate(model, ids, 2, tiers={"kv_cache": {"gpu": 120}}, disk_dir=str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_kv_cache_on_disk_uses_private_0600_files_that_go_away(tmp_path, gpt, monkeypatch):
    model, ids = gpt
    import memscale.runtime.inference.kv_cache as kv

    created = []
    real = kv.DiskRows.__init__

    def spy(self, *a, **k):
        real(self, *a, **k)
        created.append((self.path, stat.S_IMODE(os.stat(self.path).st_mode)))

    monkeypatch.setattr(kv.DiskRows, "__init__", spy)
    out = generate(model, ids, 3, tiers={"kv_cache": {"gpu": 0, "cpu": 0}}, disk_dir=str(tmp_path))
    assert out.kv_layer_tiers == ["disk"] * 6 and out.kv_bytes["disk"] > 0
    assert len(created) == 12 and all(mode == 0o600 for _, mode in created)
    assert os.listdir(tmp_path) == []


def test_without_example_inputs_nothing_can_be_planned(gpt):
    model, _ = gpt
    before = _snapshot(model)
    for offload in ({}, {"policy": "budget", "ram_bytes": "3MB"}):
        with pytest.raises(memscale.ConfigError, match="example_inputs: required"):
            wrap_for_inference(model, memscale.Config(memory_budget="1MB", offload=offload))
    _assert_untouched(model, before)


def test_the_engine_decides_paging_and_tiers_when_the_policy_is_none(tmp_path, gpt):
    model, ids = gpt
    ref = generate(model, ids, 4, return_logits=True)
    weights = sum(p.untyped_storage().nbytes() for p in model.parameters())
    cfg = memscale.Config(memory_budget=int(weights / 2.5), reservation={"prefill_tokens": 64},
                          offload={"disk_dir": str(tmp_path)})
    wrap_for_inference(model, cfg, (torch.cat([ids, ids[:, :4]], dim=1),))
    handle = handle_of(model)
    assert handle.plan is not None and handle.plan.offload.policy == "budget"
    assert handle.policy.ram_bytes == handle.plan.offload.ram_bytes < weights
    assert handle.plan.tier_policy.used
    kv = handle.plan.tier_policy.policy.kv_cache
    assert (handle.tiers.kv_cache.gpu, handle.tiers.kv_cache.cpu) == (kv.gpu, kv.cpu)
    on_device = {l.name for l in handle.plan.layers if l.weight_tier == "device" and not l.has("offload_weights")}
    pinned = {u.name for i, u in enumerate(handle.units) if handle.pager.pinned(i)}
    assert pinned == on_device & {u.name for u in handle.units}
    assert any(l.weight_tier == "disk" for l in handle.plan.layers)
    out = generate(model, ids, 4, return_logits=True)
    assert torch.equal(out.tokens, ref.tokens)
    assert all(torch.equal(a, b) for a, b in zip(out.logits, ref.logits))
    unwrap_inference(model)
    assert os.listdir(tmp_path) == []


def test_an_impossible_budget_is_the_engines_infeasible_error_with_nothing_written(tmp_path, gpt):
    model, ids = gpt
    before = _snapshot(model)
    cfg = memscale.Config(memory_budget="100KB", offload={"disk_dir": str(tmp_path)})
    with pytest.raises(memscale.InfeasibleBudgetError) as err:
        wrap_for_inference(model, cfg, (ids,))
    assert err.value.min_budget_bytes > 100_000
    assert os.listdir(tmp_path) == []
    _assert_untouched(model, before)


def test_hugging_face_past_key_values_when_installed(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=3, n_embd=64, n_head=4, vocab_size=256, n_positions=64)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, 256, (2, 8))
    ref = generate(model, ids, 4, return_logits=True)
    wrap_for_inference(model, _cfg(tmp_path, 400_000, policy="budget", prefetch_n_ahead=1), (ids,))
    out = generate(model, ids, 4, return_logits=True)
    assert torch.equal(out.tokens, ref.tokens)
    unwrap_inference(model)
