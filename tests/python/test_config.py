import json
from pathlib import Path

import pytest

import memscale

DATA = Path(__file__).resolve().parents[1] / "data"


def test_kwargs_are_the_json_keys_and_the_object_is_immutable():
    cfg = memscale.Config(memory_budget="4GiB", techniques={"checkpoint": "on"}, force_optimize=True)
    assert cfg.memory_budget == 4 << 30
    assert cfg.techniques["checkpoint"] == "on"
    assert cfg.techniques["tiling"] == "auto"
    assert cfg.force_optimize is True
    with pytest.raises(AttributeError):
        cfg.mode = "off"
    cfg.techniques["checkpoint"] = "off"  # a copy: the Config does not change
    assert cfg.techniques["checkpoint"] == "on"


def test_fraction_budget_resolves_against_device_memory():
    cfg = memscale.Config(memory_budget=0.25)
    assert cfg.resolve_budget(4000) == 1000
    assert memscale.Config().resolve_budget(1000) == 900  # default safety margin 0.10


def test_json_round_trip_text_and_path(tmp_path):
    cfg = memscale.Config(mode="min_memory", offload={"policy": "pinned_hot_set", "ram_bytes": "1GiB",
                                                      "pin_last_n_layers": 2},
                          tiers={"weights": {"gpu": 20, "cpu": 30}}, layer_overrides={"blocks.*": {"checkpoint": "off"}})
    again = memscale.Config.from_json(cfg.to_json())
    assert again == cfg and again.to_json() == cfg.to_json()
    path = tmp_path / "cfg.json"
    path.write_text(cfg.to_json())
    assert memscale.Config.from_json(path) == cfg
    assert memscale.Config.from_json(str(path)) == cfg


def test_repr_shows_what_differs_from_defaults():
    text = repr(memscale.Config(memory_budget="1GiB", mode="off"))
    assert text == "Config(memory_budget=1073741824, mode='off')"


@pytest.mark.parametrize("row", json.loads((DATA / "bad_configs.json").read_text()), ids=lambda r: json.dumps(r["config"])[:60])
def test_bad_inputs_raise_config_error_with_the_documented_message(row):
    with pytest.raises(memscale.ConfigError) as info:
        if isinstance(row["config"], dict):
            memscale.Config(**row["config"])
        else:
            memscale.Config.from_json(json.dumps(row["config"]))
    assert row["error"] in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, memscale.MemScaleError)


def test_bad_config_table_is_large_enough():
    assert len(json.loads((DATA / "bad_configs.json").read_text())) >= 30
