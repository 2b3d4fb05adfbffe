"""Rules both languages share live in the C++ core and are read through ``memscale._C``:
optimizer-state factors and master weights, position-wise leaf kinds, the tier split rule."""
from __future__ import annotations

import math

import pytest

from memscale import _C
from memscale.errors import ConfigError


def test_optimizer_state_factors() -> None:
    assert _C.optimizer_kinds() == ["none", "sgd", "sgd_momentum", "adam", "adamw"]
    assert {k: _C.optimizer_state_factor(k) for k in _C.optimizer_kinds()} == {
        "none": 0, "sgd": 0, "sgd_momentum": 1, "adam": 2, "adamw": 2}
    assert _C.MASTER_WEIGHT_BYTES_PER_ELEMENT == 4
    assert _C.optimizer_state_bytes("adamw", 2000, 1000, False) == 4000
    assert _C.optimizer_state_bytes("adamw", 2000, 1000, True) == 8000


def test_unknown_optimizer_names_the_value_and_the_allowed_ones() -> None:
    with pytest.raises(ConfigError) as info:
        _C.optimizer_state_factor("lion")
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert '"lion"' in message
    assert all(f'"{k}"' in message for k in _C.optimizer_kinds())


def test_position_wise_leaf_kinds() -> None:
    from torch import nn

    kinds = _C.position_wise_leaf_kinds()
    assert "Linear" in kinds and "LayerNorm" in kinds and "Dropout" in kinds
    assert len(set(kinds)) == len(kinds)
    assert "Conv1d" not in kinds and "BatchNorm1d" not in kinds
    assert set(_C.feature_axis_kinds()) == {"GLU", "Softmax", "LogSoftmax"} <= set(kinds)
    assert _C.random_mask_kinds() == ["Dropout"]
    # Every kind names a torch.nn module class of that name.
    for kind in kinds:
        assert isinstance(getattr(nn, kind), type), kind


def test_tier_split_from_dict_and_back() -> None:
    s = _C.TierSplit.from_dict({"gpu": 20, "cpu": 30}, "tiers.weights")
    assert (s.gpu, s.cpu, s.disk) == (20, 30, 50)
    assert s.to_dict() == {"gpu": 20.0, "cpu": 30.0, "disk": 50.0}
    assert _C.TierSplit.from_dict(s.to_dict()) == s
    assert _C.TierSplit.from_dict({}) == _C.TierSplit(100, 0)
    assert _C.TierSplit.from_dict({"gpu": 50}) == _C.TierSplit(50, 0)
    assert _C.TierSplit.from_json('{"gpu": 0, "cpu": 100}', "tiers.kv_cache") == _C.TierSplit(0, 100)
    assert hash(_C.TierSplit(20, 30)) == hash(_C.TierSplit(20, 30))


@pytest.mark.parametrize("value,message", [
    (3, 'tiers.kv_cache: got 3, expected an object {"gpu": percent, "cpu": percent}'),
    ({"gpux": 1}, 'tiers.kv_cache: unknown key "gpux"; allowed keys: gpu, cpu, disk'),
    ({"gpu": 120}, "tiers.kv_cache.gpu: got 120, expected a percentage in [0, 100]"),
    ({"cpu": -1}, "tiers.kv_cache.cpu: got -1, expected a percentage in [0, 100]"),
    ({"gpu": True}, "tiers.kv_cache.gpu: got true, expected a percentage in [0, 100]"),
    ({"gpu": math.nan}, "tiers.kv_cache.gpu: got nan, expected a percentage in [0, 100]"),
    ({"gpu": 70, "cpu": 50}, "tiers.kv_cache: gpu + cpu = 120 exceeds 100 (disk takes the remainder, 100 - gpu - cpu)"),
    ({"gpu": 20, "cpu": 30, "disk": 10}, "tiers.kv_cache.disk: got 10, but disk is 100 - gpu - cpu = 50"),
])
def test_tier_split_errors_name_the_key_path(value, message) -> None:
    with pytest.raises(ConfigError) as info:
        _C.TierSplit.from_dict(value, "tiers.kv_cache")
    assert message in str(info.value)


def test_tier_split_bounds_are_inclusive() -> None:
    for gpu, cpu in ((0, 0), (100, 0), (0, 100), (60, 40)):
        assert _C.TierSplit.from_dict({"gpu": gpu, "cpu": cpu}) == _C.TierSplit(gpu, cpu)


def test_tier_splits_and_policy() -> None:
    splits = _C.parse_tier_splits({"kv_cache": {"gpu": 50}}, "tiers")
    assert splits == {"kv_cache": _C.TierSplit(50, 0)}
    with pytest.raises(ConfigError, match='tiers: unknown tensor type "kv"; allowed: weights, kv_cache, activations'):
        _C.parse_tier_splits({"kv": {}}, "tiers")
    assert _C.tier_tensor_types() == ["weights", "kv_cache", "activations"]
    p = _C.TierPolicy.from_dict({"weights": {"gpu": 20, "cpu": 30}})
    assert p.weights == _C.TierSplit(20, 30) and p.kv_cache == _C.TierSplit()
    d = p.to_dict()
    assert d["weights"] == {"gpu": 20.0, "cpu": 30.0, "disk": 50.0}
    assert set(d) == {"weights", "kv_cache", "activations"}
    assert _C.TierPolicy.from_dict(d) == p
    assert "TierPolicy(weights=TierSplit(gpu=20, cpu=30)" in repr(p)
    with pytest.raises(TypeError, match="tiers.weights.gpu"):
        _C.TierPolicy.from_dict({"weights": {"gpu": object()}})
