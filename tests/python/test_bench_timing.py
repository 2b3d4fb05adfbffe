import pytest
import torch

from memscale.bench import timing
from memscale.errors import ConfigError


def test_rounds_are_interleaved_rotated_and_warmed_up():
    calls = []
    steps = {name: (lambda n=name: calls.append(n)) for name in ("a", "b", "c")}
    t = timing.interleave(steps, rounds=3, warmup=1)
    # one warm-up round, then 3 timed rounds; the order rotates each round
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert {name: len(times) for name, times in t.times_s.items()} == {"a": 3, "b": 3, "c": 3}
    method = t.method()
    assert method["kind"] == "interleaved" and method["rounds"] == 3 and method["warmup_rounds"] == 1
    assert method["torch_threads"] == timing.DEFAULT_THREADS


def test_ratio_is_the_median_of_paired_per_round_ratios():
    t = timing.Timing({"x": [2.0, 4.0, 30.0], "base": [1.0, 2.0, 10.0]}, rounds=3, warmup=0, threads=1)
    # a slow third round (machine load) hits both alike; the paired ratios are 2, 2, 3
    assert t.ratio("x", "base") == 2.0
    assert t.median("x") == 4.0


def test_threads_are_fixed_for_the_block_and_restored(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("MEMSCALE_BENCH_THREADS", "1")
    seen = []
    t = timing.interleave({"a": lambda: seen.append(torch.get_num_threads())}, rounds=1, warmup=0)
    assert seen == [1] and t.threads == 1
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_a_bad_thread_count_is_a_config_error(monkeypatch, value):
    monkeypatch.setenv("MEMSCALE_BENCH_THREADS", value)
    with pytest.raises(ConfigError, match="MEMSCALE_BENCH_THREADS"):
        timing.bench_threads()
