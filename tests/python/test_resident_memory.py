"""The process's resident set, not only the counted tensors, stays within an offloaded
model's budget: wrap gives the freed weights back to the OS and the pager's loads and
evictions do not leave freed memory in the process. Measured in a process of its own
(memscale.bench.scenarios._offload_rss) on the offload benchmark's quick HF Llama."""
from __future__ import annotations

import sys

import pytest

from memscale.testing import hf_models

pytestmark = [
    pytest.mark.skipif(not hf_models.available(), reason="needs transformers"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status"),
]

MiB = 1 << 20


def test_resident_set_after_wrap_and_during_generate_stays_within_the_budget():
    from memscale.bench.scenarios import _offload_rss
    from memscale.bench.scenarios.offload_inference import RSS_BUDGET_FACTOR, RSS_FIXED_OVERHEAD_BYTES

    r = _offload_rss.run_child("llama", "quick", 0.25, "drop", batch=8, prompt_len=8, new_tokens=4, threads=1)
    assert r["outputs_equal_unwrapped"]
    assert r["policy"] != "none"
    budget = r["budget_bytes"]
    # After wrap the process holds what the counted tensors are, plus the fixed overhead
    # (code pages, memscale's objects): without malloc_trim it kept the whole model (4x the budget).
    assert r["rss_above_tensors_after_wrap_bytes"] < 16 * MiB, r
    assert r["rss_after_wrap_rise_bytes"] < budget + 16 * MiB, r
    # During generate: the counted peak within the budget, the resident set within the allowance.
    assert r["tensor_peak_bytes"] <= 1.05 * budget, r
    assert r["rss_peak_rise_bytes"] <= RSS_BUDGET_FACTOR * budget + RSS_FIXED_OVERHEAD_BYTES, r
    assert r["rss_above_tensor_peak_bytes"] < 24 * MiB, r
