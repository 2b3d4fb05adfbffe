"""track_memory: exact CPU counting through the c10 allocator wrapper; nesting; restore."""
import threading

import pytest
import torch

from memscale import _C
from memscale.memory import track_memory


def test_exact_current_and_peak_of_known_allocations() -> None:
    with track_memory("cpu") as t:
        assert (t.current_bytes, t.peak_bytes) == (0, 0)
        a = torch.empty(1000, dtype=torch.uint8)
        b = torch.empty(256, dtype=torch.float32)  # 1024 bytes
        assert (t.current_bytes, t.peak_bytes) == (2024, 2024)
        del a
        assert (t.current_bytes, t.peak_bytes) == (1024, 2024)
        c = torch.empty((10, 10), dtype=torch.float64)  # 800 bytes
        assert (t.current_bytes, t.peak_bytes) == (1824, 2024)
        del b, c
        assert t.current_bytes == 0
    assert (t.current_bytes, t.peak_bytes) == (0, 2024)  # final figures kept after exit


def test_views_and_inplace_ops_allocate_nothing() -> None:
    x = torch.ones(64)
    with track_memory("cpu") as t:
        v = x.view(8, 8)
        v.add_(v)  # tensor operands: a Python scalar would be wrapped in a (counted) tensor
        x.mul_(x)
    assert t.peak_bytes == 0
    assert float(v.sum()) == 256.0


def test_installation_is_restored_and_nesting_works() -> None:
    assert not _C.counting_allocator_installed()
    with track_memory("cpu") as outer:
        assert _C.counting_allocator_installed()
        keep = torch.empty(500, dtype=torch.uint8)
        with track_memory("cpu") as inner:
            tmp = torch.empty(3000, dtype=torch.uint8)
            del tmp
            assert (inner.current_bytes, inner.peak_bytes) == (0, 3000)
        assert _C.counting_allocator_installed()  # the outer session still counts
        assert (outer.current_bytes, outer.peak_bytes) == (500, 3500)
        del keep
    assert not _C.counting_allocator_installed()
    assert outer.current_bytes == 0


def test_freeing_blocks_allocated_before_installation_does_not_underflow() -> None:
    old = torch.empty(4096, dtype=torch.uint8)
    with track_memory("cpu") as t:
        del old
        assert t.current_bytes == 0
        x = torch.empty(10, dtype=torch.uint8)
        assert (t.current_bytes, t.peak_bytes) == (10, 10)
    # a block allocated while counting and freed after uninstallation is freed correctly
    del x
    with track_memory("cpu") as t2:
        pass
    assert t2.current_bytes == 0


def test_reset_peak_measures_a_later_span() -> None:
    with track_memory("cpu") as t:
        big = torch.empty(10_000, dtype=torch.uint8)
        del big
        t.reset_peak()
        small = torch.empty(100, dtype=torch.uint8)
        assert t.peak_bytes == 100
        del small
    with pytest.raises(RuntimeError, match="closed"):
        t.reset_peak()


def test_matches_tensor_bytes_of_a_real_computation() -> None:
    torch.manual_seed(0)
    w = torch.randn(64, 64)
    with track_memory("cpu") as t:
        x = torch.randn(32, 64)
        y = x @ w
        z = torch.relu(y)
        expected = sum(u.numel() * u.element_size() for u in (x, y, z))
        assert t.current_bytes == expected


def test_allocations_from_other_threads_are_counted() -> None:
    out: list[torch.Tensor] = []
    with track_memory("cpu") as t:
        th = threading.Thread(target=lambda: out.append(torch.empty(777, dtype=torch.uint8)))
        th.start()
        th.join()
        assert t.current_bytes == 777


def test_bad_device_names_the_argument() -> None:
    with pytest.raises(ValueError, match="device"):
        with track_memory("tpu"):
            pass
    with pytest.raises(ValueError, match="device"):
        with track_memory("meta"):
            pass


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peak_and_nesting() -> None:
    with track_memory("cuda") as outer:
        a = torch.empty(1 << 20, dtype=torch.uint8, device="cuda")
        with track_memory("cuda") as inner:
            b = torch.empty(1 << 21, dtype=torch.uint8, device="cuda")
            del b
        del a
    assert inner.peak_bytes >= 1 << 21
    assert outer.peak_bytes >= (1 << 20) + (1 << 21)


def test_block_counted_by_an_earlier_session_does_not_lower_a_later_one() -> None:
    with track_memory("cpu"):
        old = torch.empty(5000, dtype=torch.uint8)  # allocated through the counting allocator
    with track_memory("cpu") as outer:
        with track_memory("cpu") as t:
            del old
            x = torch.empty(64, dtype=torch.uint8)
            assert (t.current_bytes, t.peak_bytes) == (64, 64)
        del x
    assert (outer.current_bytes, outer.peak_bytes) == (0, 64)
