"""Disk-tier activation offload: files, their lifetime, and the directory checks."""
from __future__ import annotations

import os
import shutil
import stat
from collections import namedtuple

import pytest
import torch
from torch import nn

from executor_testlib import layer, module_state
from memscale.errors import OffloadDirError
from memscale.runtime.training import active_handle, apply_plan
from memscale.runtime.training.offload_activations import DEFAULT_MIN_OFFLOAD_BYTES, ActivationStore
from memscale.runtime.offload_dir import check_offload_dir


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))


def test_files_written_then_removed_after_backward(tmp_path) -> None:
    model = _mlp()
    x = torch.randn(32, 64, requires_grad=True)
    handle = apply_plan(model, {"layers": [layer("0", ["offload_activations"], tier="disk"),
                                           layer("2", ["offload_activations"], tier="disk")]},
                        offload_dir=tmp_path, min_offload_bytes=0)
    y = model(x)
    handle.store.writer().submit(lambda: None).result()  # drain pending writes
    session = handle.store._session_dir
    files = sorted(session.iterdir())
    assert files, "forward wrote nothing"
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert stat.S_IMODE(session.stat().st_mode) == 0o700
    y.square().sum().backward()
    assert list(session.iterdir()) == []
    handle.remove()
    assert not session.exists()


def test_files_hold_raw_tensor_bytes(tmp_path) -> None:
    """The file is the tensor's bytes, nothing else (no pickle, no header)."""
    store = ActivationStore(tmp_path, min_offload_bytes=0)
    x = torch.randn(16, 64, requires_grad=True)
    w = torch.randn(64, 64, requires_grad=True)
    with store.layer("mm", tier="disk"):
        y = x @ w
    store.writer().submit(lambda: None).result()
    files = sorted(store.session_dir().iterdir())
    contents = {f.read_bytes() for f in files}
    assert x.detach().numpy().tobytes() in contents
    assert w.detach().numpy().tobytes() in contents
    y.sum().backward()
    store.close()


def test_small_tensors_move_by_default_and_stay_below_an_explicit_threshold(tmp_path) -> None:
    # The plan counts every saved byte of an offloaded layer as moved: by default the
    # runtime moves even a 1 KiB input; a threshold the caller sets keeps it resident.
    assert DEFAULT_MIN_OFFLOAD_BYTES == 0
    for threshold, written in ((None, True), (4 * 64 * 4 + 1, False)):
        model = _mlp()
        extra = {} if threshold is None else {"min_offload_bytes": threshold}
        handle = apply_plan(model, {"layers": [layer("0", ["offload_activations"], tier="disk")]},
                            offload_dir=tmp_path, **extra)
        y = model(torch.randn(4, 64))  # 1 KiB input
        handle.store.writer().submit(lambda: None).result()
        session = handle.store._session_dir
        assert (session is not None and any(session.iterdir())) == written, (threshold, session)
        y.sum().backward()
        handle.remove()


def test_parameters_stay_in_memory(tmp_path) -> None:
    store = ActivationStore(tmp_path, min_offload_bytes=0,
                            protected_storages=lambda: {p.untyped_storage().data_ptr()
                                                        for p in lin.parameters()})
    lin = nn.Linear(64, 64).requires_grad_(False)
    with store.layer("lin", tier="disk"):
        # frozen layer, input needs grad: only the weight is saved (for the input's grad)
        y = lin(torch.randn(8, 64, requires_grad=True))
    store.writer().submit(lambda: None).result()
    assert store._session_dir is None  # the weight is the model's: never offloaded
    store.close()


def test_shared_storage_written_once_and_views_share_it(tmp_path) -> None:
    store = ActivationStore(tmp_path, min_offload_bytes=0)
    base = torch.randn(8, 32, requires_grad=True)
    h = base * 1.0  # a non-leaf whose storage two saved views share
    w = torch.randn(32, 32, requires_grad=True)
    seen = []
    unpack = store._unpack

    def spy(packed):
        t = unpack(packed)
        seen.append(t)
        return t
    store._unpack = spy
    with store.layer("two", tier="disk"):
        out = (h[:6] @ w).sum() + (h[2:] @ w).sum()
    store.writer().submit(lambda: None).result()
    n_files = len(list(store.session_dir().iterdir()))
    assert n_files == 2  # h's storage once, w once
    out.backward()
    ptrs = {t.untyped_storage().data_ptr() for t in seen if t.shape[1] == 32 and t.shape[0] in (6,)}
    assert len(ptrs) == 1
    views = [t for t in seen if t.shape == (6, 32)]
    assert len({v.untyped_storage().data_ptr() for v in views}) == 1  # one reloaded copy
    store.close()


def test_retain_graph_second_backward(tmp_path) -> None:
    model = _mlp()
    handle = apply_plan(model, {"layers": [layer("0", ["offload_activations"], tier="disk")]},
                        offload_dir=tmp_path, min_offload_bytes=0)
    x = torch.randn(8, 64, requires_grad=True)
    y = model(x).sum()
    (g1,) = torch.autograd.grad(y, x, retain_graph=True)
    (g2,) = torch.autograd.grad(y, x)
    assert torch.equal(g1, g2)
    del y
    assert list(handle.store._session_dir.iterdir()) == []
    handle.remove()


def test_graph_freed_without_backward_removes_files(tmp_path) -> None:
    model = _mlp()
    handle = apply_plan(model, {"layers": [layer("0", ["offload_activations"], tier="disk")]},
                        offload_dir=tmp_path, min_offload_bytes=0)
    y = model(torch.randn(8, 64, requires_grad=True))
    handle.store.writer().submit(lambda: None).result()
    assert list(handle.store._session_dir.iterdir())
    del y
    handle.store.writer().submit(lambda: None).result()
    assert list(handle.store._session_dir.iterdir()) == []
    handle.remove()


# -- directory checks: raise before anything is modified -------------------------------------

def _plan() -> dict:
    return {"layers": [layer("0", ["checkpoint"]),
                       {**layer("2", ["offload_activations"], tier="disk"),
                        "bytes_before": 5 << 20, "bytes_after": 1 << 20}]}


def _assert_refused(tmp_dir, match: str, **kwargs) -> None:
    model = _mlp()
    before = module_state(model)
    with pytest.raises(OffloadDirError, match=match) as info:
        apply_plan(model, _plan(), offload_dir=tmp_dir, **kwargs)
    assert str(tmp_dir) in str(info.value)
    assert module_state(model) == before
    assert active_handle(model) is None


def test_dir_missing_with_unwritable_parent(tmp_path) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        _assert_refused(parent / "sub" / "dir", "cannot be created.*not writable")
        assert not (parent / "sub").exists()
    finally:
        parent.chmod(0o755)


def test_dir_read_only(tmp_path) -> None:
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        _assert_refused(d, r"not writable \(mode 0o500\)")
    finally:
        d.chmod(0o755)


def test_dir_is_a_file(tmp_path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    _assert_refused(f, "not a directory")


def test_dir_too_little_space(tmp_path, monkeypatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 << 20, 9 << 20, 1 << 20))
    target = tmp_path / "new"
    # the plan offloads 5 MiB - 1 MiB = 4 MiB to disk; 1 MiB is free
    _assert_refused(target, r"1\.00 MiB free but the plan offloads 4\.00 MiB")
    assert not target.exists()  # created for the check, removed again
    model = _mlp()
    apply_plan(model, _plan(), offload_dir=target, required_disk_bytes=1 << 19).remove()


def test_dir_created_when_missing(tmp_path) -> None:
    target = tmp_path / "a" / "b"
    path = check_offload_dir(target, 0)
    assert path.is_dir() and stat.S_IMODE(path.stat().st_mode) == 0o700


def test_env_default_dir(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MEMSCALE_OFFLOAD_DIR", str(tmp_path / "env"))
    model = _mlp()
    with apply_plan(model, _plan()) as handle:
        assert handle.offload_dir == tmp_path / "env"


def test_no_dir_check_without_disk_tier(tmp_path) -> None:
    """A plan with no disk-tier layer never looks at the directory."""
    model = _mlp()
    apply_plan(model, {"layers": [layer("0", ["checkpoint"])]},
               offload_dir="/proc/definitely/not/here").remove()
    assert not os.path.exists("/proc/definitely")
