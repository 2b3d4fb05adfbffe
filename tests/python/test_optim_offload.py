"""memscale.optim.offloaded: optimizer state (and gradients) on the disk tier, stepped window
by window with torch's own update math; equal to the resident optimizer."""
from __future__ import annotations

import copy
import gc
import os
import stat
from collections import namedtuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import memscale
import memscale.optim
from memscale.errors import ConfigError, OffloadDirError
from memscale.runtime import offload_dir
from memscale.testing import hf_models


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 8))


def _batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 32, generator=g), torch.randn(16, 8, generator=g)) for _ in range(n)]


def _groups(model: nn.Module) -> list[dict]:
    """Two groups with their own hyperparameters, one frozen parameter among them."""
    model[0].bias.requires_grad_(False)
    return [{"params": list(model[0].parameters()) + list(model[2].parameters()), "lr": 1e-2},
            {"params": list(model[4].parameters()), "lr": 3e-3, "weight_decay": 0.0}]


def _train(model: nn.Module, opt: torch.optim.Optimizer, batches, micro: int = 1) -> list[float]:
    losses = []
    for x, y in batches:
        opt.zero_grad()
        for xs, ys in zip(x.chunk(micro), y.chunk(micro)):
            loss = F.mse_loss(model(xs), ys) / micro
            loss.backward()
            losses.append(loss.item())
        opt.step()
    return losses


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=0, msg=name)


_ADAMW = lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1)  # noqa: E731
_ADAM_FOREACH = lambda ps: torch.optim.Adam(ps, lr=1e-2, foreach=True)  # noqa: E731
_SGD_NESTEROV = lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, nesterov=True)  # noqa: E731


# Each optimizer once with one parameter per window and once with windows of several,
# gradients resident in one and offloaded in the other.
@pytest.mark.parametrize("make, window_bytes, gradients", [
    (_ADAMW, None, False), (_ADAMW, 20_000, True),
    (_ADAM_FOREACH, None, True), (_ADAM_FOREACH, 20_000, False),
    (_SGD_NESTEROV, None, True), (_SGD_NESTEROV, 20_000, False),
], ids=["adamw-one-param", "adamw-window-grads", "adam-foreach-one-param-grads", "adam-foreach-window",
        "sgd-momentum-one-param-grads", "sgd-momentum-window"])
def test_equal_to_the_resident_optimizer(tmp_path, make, window_bytes, gradients) -> None:
    ref, model = _mlp(), _mlp()
    ref_opt = make(_groups(ref))
    opt = memscale.optim.offloaded(make(_groups(model)), directory=tmp_path, gradients=gradients,
                                   window_bytes=window_bytes)
    batches = _batches(4)
    assert _train(model, opt, batches) == _train(ref, ref_opt, batches)
    _assert_same(model, ref)
    assert not opt.inner.state  # nothing resident between steps
    assert opt.stored_bytes() > 0
    files = list(opt.tier.dir.iterdir())
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert stat.S_IMODE(opt.tier.dir.stat().st_mode) == 0o700
    # the state comes back whole: close(restore) and keep stepping resident
    sd = opt.state_dict()
    torch.testing.assert_close(sd["state"], ref_opt.state_dict()["state"], rtol=1e-6, atol=0)
    tier_dir = opt.tier.dir
    inner = opt.close()
    assert not tier_dir.exists()
    more = _batches(1, seed=7)
    _train(model, inner, more)
    _train(ref, ref_opt, more)
    _assert_same(model, ref)


def test_gradient_accumulation_over_four_micro_batches(tmp_path) -> None:
    ref, model = _mlp(), _mlp()
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    opt = memscale.optim.offloaded(torch.optim.AdamW(model.parameters(), lr=1e-2),
                                   directory=tmp_path, gradients=True)
    x, y = _batches(1)[0]
    loss = F.mse_loss(model(x[:4]), y[:4])
    loss.backward()
    assert all(p.grad is None for p in model.parameters())  # moved to the tier as produced
    assert len([k for k in opt.tier.keys() if k.startswith("grad-")]) == 6
    opt.zero_grad()
    assert not [k for k in opt.tier.keys() if k.startswith("grad-")]
    batches = _batches(3)
    assert _train(model, opt, batches, micro=4) == _train(ref, ref_opt, batches, micro=4)
    _assert_same(model, ref)
    grads = dict((id(p), g) for p, g in opt.grads())
    for p, q in zip(ref.parameters(), model.parameters()):
        torch.testing.assert_close(grads[id(q)], p.grad, rtol=1e-6, atol=0)
    opt.close()


def test_hf_model_plain_loop(tmp_path) -> None:
    pytest.importorskip("transformers")
    ref = hf_models.gpt2(batch=1, seq=16, labels=False)
    case = hf_models.gpt2(batch=1, seq=16, labels=False)
    ref_opt = torch.optim.AdamW(ref.model.parameters(), lr=1e-3)
    opt = memscale.optim.offloaded(torch.optim.AdamW(case.model.parameters(), lr=1e-3),
                                   directory=tmp_path, gradients=True, window_bytes=1 << 18)
    for c, o in ((ref, ref_opt), (case, opt)):
        c.losses = []
        for step in range(3):
            torch.manual_seed(step)  # the same dropout masks in both runs
            o.zero_grad()
            loss = c.loss_fn(c.model(**c.inputs))
            loss.backward()
            o.step()
            c.losses.append(loss.item())
    assert case.losses == ref.losses
    _assert_same(case.model, ref.model)
    opt.close()


def test_only_a_window_of_state_is_resident(tmp_path) -> None:
    def model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(*[nn.Linear(128, 128, bias=False) for _ in range(8)])
    x = torch.randn(4, 128)
    param_bytes = 128 * 128 * 4
    total_state = 2 * 8 * param_bytes  # AdamW: two moments per parameter

    def step_figures(m: nn.Module, opt: torch.optim.Optimizer) -> tuple[int, int]:
        m(x).sum().backward()
        with memscale.track_memory("cpu") as t:
            opt.step()
        opt.zero_grad()
        return t.current_bytes, t.peak_bytes

    m = model()
    resident_after, _ = step_figures(m, torch.optim.AdamW(m.parameters()))
    assert resident_after >= total_state  # the measure sees resident state
    m = model()
    opt = memscale.optim.offloaded(torch.optim.AdamW(m.parameters()), directory=tmp_path)
    for _ in range(2):  # the first step creates the state, the second streams it
        after, peak = step_figures(m, opt)
        assert after < 4096, after
        # one window stepping, the next one read ahead, the previous one being written
        # (each 2 moments + Adam's step scalar, aligned), plus the per-tensor step's
        # temporaries (two parameter-sized, and a few scalars): half of the whole state
        window = 2 * param_bytes + 64
        assert peak <= 3 * window + 2 * param_bytes + 4096, (peak, total_state)
    assert opt.tier.bytes_read >= total_state
    opt.close()


def _snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())


def _assert_unchanged(model: nn.Module, opt: torch.optim.Optimizer, snap: tuple[dict, dict]) -> None:
    torch.testing.assert_close(model.state_dict(), snap[0], rtol=0, atol=0)
    torch.testing.assert_close(opt.state_dict(), snap[1], rtol=0, atol=0)
    assert all(not p._post_accumulate_grad_hooks for p in model.parameters())
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("fault", ["missing", "read-only", "full"])
def test_disk_faults_fail_before_anything_changes(tmp_path, monkeypatch, fault) -> None:
    model = _mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _train(model, opt, _batches(1))  # state exists, gradients present
    snap = _snapshot(model, opt)
    if fault == "missing":
        parent = tmp_path / "ro"
        parent.mkdir()
        parent.chmod(0o555)
        target, expect = parent / "state", "does not exist and cannot be created"
    elif fault == "read-only":
        target = tmp_path / "ro"
        target.mkdir()
        target.chmod(0o555)
        expect = "is not writable"
    else:
        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(offload_dir.shutil, "disk_usage", lambda _p: usage(1 << 30, (1 << 30) - 1000, 1000))
        # 6792 fp32 parameters (26.53 KiB): 2x that of AdamW moments, 1x of gradients, plus
        # each record's alignment and scalars (6 x 448 B)
        target, expect = tmp_path / "full", r"1000 B free but the plan offloads 82\.22 KiB of optimizer state and gradients"
    try:
        with pytest.raises(OffloadDirError, match=expect) as err:
            memscale.optim.offloaded(opt, directory=target, gradients=True)
        assert str(target) in str(err.value)
        _assert_unchanged(model, opt, snap)
        assert not (target.exists() and any(target.iterdir()))
    finally:
        for d in (tmp_path / "ro",):
            if d.exists():
                d.chmod(0o755)


def test_refusals_name_the_value(tmp_path) -> None:
    p = [nn.Parameter(torch.zeros(4))]
    with pytest.raises(ConfigError, match="RMSprop is not modelled"):
        memscale.optim.offloaded(torch.optim.RMSprop(p), directory=tmp_path)
    with pytest.raises(ConfigError, match="window_bytes: 0"):
        memscale.optim.offloaded(torch.optim.SGD(p, lr=0.1), directory=tmp_path, window_bytes=0)
    with pytest.raises(ConfigError, match="tier: 'nvme'"):
        memscale.optim.offloaded(torch.optim.SGD(p, lr=0.1), directory=tmp_path, tier="nvme")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="needs CUDA"):
            memscale.optim.offloaded(torch.optim.SGD(p, lr=0.1), tier="host")
    assert not list(tmp_path.iterdir())
    assert os.path.isdir(tmp_path)


def test_files_removed_when_the_optimizer_is_collected(tmp_path) -> None:
    model = _mlp()
    opt = memscale.optim.offloaded(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                                   directory=tmp_path)
    _train(model, opt, _batches(1))
    tier_dir = opt.tier.dir
    assert len(list(tier_dir.iterdir())) == 6
    del opt
    gc.collect()
    assert not tier_dir.exists()


def test_clip_grad_norm_and_io_stats(tmp_path) -> None:
    ref, model = _mlp(), _mlp()
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    opt = memscale.optim.offloaded(torch.optim.AdamW(model.parameters(), lr=1e-2),
                                   directory=tmp_path, gradients=True)
    for x, y in _batches(3):
        for m, o in ((ref, ref_opt), (model, opt)):
            o.zero_grad()
            (F.mse_loss(m(x), y) * 50).backward()
        want = torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        got = opt.clip_grad_norm_(1.0)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
        assert want > 1.0  # the clip acted
        ref_opt.step()
        opt.step()
    _assert_same(model, ref)
    stats = opt.io_stats()
    assert stats["bytes_read"] > 0 and stats["bytes_written"] > 0
    assert 0.0 <= stats["hidden_read_share"] <= 1.0
    opt.close()


def test_a_failed_write_loses_nothing(tmp_path, monkeypatch) -> None:
    import errno
    from memscale.runtime.training import state_tier
    ref, model = _mlp(), _mlp()
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    opt = memscale.optim.offloaded(torch.optim.AdamW(model.parameters(), lr=1e-2),
                                   directory=tmp_path, gradients=True)
    batches = _batches(3)
    _train(model, opt, batches[:1])
    real = state_tier.os.pwrite

    def full(*_a):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(state_tier.os, "pwrite", full)
    with pytest.raises(OffloadDirError, match=r"write\(s\) of optimizer state or gradients failed "
                                              r"\(first: .*No space left on device\); the step completed"):
        _train(model, opt, batches[1:2])
    assert opt.tier.kept_bytes() > 0
    monkeypatch.setattr(state_tier.os, "pwrite", real)
    _train(model, opt, batches[2:])
    assert opt.tier.kept_bytes() == 0
    _train(ref, ref_opt, batches)
    _assert_same(model, ref)
    opt.close()


def test_existing_state_that_cannot_be_written_stays(tmp_path, monkeypatch) -> None:
    import errno
    from memscale.runtime.training import state_tier
    model = _mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _train(model, opt, _batches(1))
    snap = _snapshot(model, opt)

    def full(*_a):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(state_tier.os, "pwrite", full)
    with pytest.raises(OffloadDirError, match="existing state failed .*the optimizer and the model are unchanged"):
        memscale.optim.offloaded(opt, directory=tmp_path, gradients=True)
    monkeypatch.undo()
    _assert_unchanged(model, opt, snap)
    assert not list(tmp_path.iterdir())


def test_an_lr_scheduler_drives_the_offloaded_optimizer(tmp_path) -> None:
    ref, model = _mlp(), _mlp()
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    opt = memscale.optim.offloaded(torch.optim.AdamW(model.parameters(), lr=1e-2), directory=tmp_path)
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5) for o in (ref_opt, opt)]
    for x, y in _batches(3):
        for m, o, s in zip((ref, model), (ref_opt, opt), scheds):
            o.zero_grad()
            F.mse_loss(m(x), y).backward()
            o.step()
            s.step()
    assert opt.inner.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"] == 1e-2 / 8
    _assert_same(model, ref)
    opt.close()
