"""The Config schema is the single account of Config keys: the validator accepts every key
it lists with the defaults it states, refuses the rest, and docs/config.md is its rendering."""
import json
from pathlib import Path

import pytest

import memscale
from memscale import _C
from memscale.cli import main as cli_main
from memscale.report.config_doc import REGENERATE, render_config_doc

CONFIG_DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"
SCHEMA = memscale.config_schema()


def resolve(node):
    if "$ref" not in node:
        return node
    definition = SCHEMA["$defs"][node["$ref"].removeprefix("#/$defs/")]
    return {**definition, **{k: v for k, v in node.items() if k != "$ref"}}


def schema_keys(node=SCHEMA, path=()):
    """(path, node) of every key; a map's keys are '*'."""
    node = resolve(node)
    for key, child in node.get("properties", {}).items():
        yield path + (key,), resolve(child)
        yield from schema_keys(child, path + (key,))
    if "properties" not in node and isinstance(node.get("additionalProperties"), dict):
        yield path + ("*",), node["additionalProperties"]
        yield from schema_keys(node["additionalProperties"], path + ("*",))


def leaves(value, path=()):
    """Paths of the leaves of a Config dict, map keys written '*'."""
    node = dict(schema_keys()).get(path, {}) if path else SCHEMA
    if not isinstance(value, dict) or not ("properties" in node or "additionalProperties" in node):
        return {path}
    is_map = "properties" not in node
    return set().union(*(leaves(child, path + ("*" if is_map else key,)) for key, child in value.items()))


def schema_leaves():
    return {path for path, node in schema_keys() if "properties" not in node and
            not isinstance(node.get("additionalProperties"), dict)}


def test_committed_config_doc_is_the_generated_one():
    assert CONFIG_DOC.read_text(encoding="utf-8") == render_config_doc(), (
        f"docs/config.md is out of date with the Config schema; regenerate it from the repository root: {REGENERATE}")


def test_every_schema_key_is_accepted_and_written_back():
    example = json.loads(_C.config_example_json())
    assert leaves(example) == schema_leaves()
    written = memscale.Config(**example).to_dict()
    assert leaves(written) == schema_leaves(), "Config.to_json writes keys the schema lacks, or the reverse"
    assert memscale.Config(**example) != memscale.Config()


def test_every_schema_default_is_the_default_config_value():
    written = {
        "none": memscale.Config().to_dict(),
        "pinned_hot_set": memscale.Config(offload={"policy": "pinned_hot_set", "ram_bytes": 1}).to_dict(),
    }
    checked = 0
    for path, node in schema_keys():
        if "default" not in node or "*" in path:
            continue
        value = written["none" if "none" in node.get("x-policies", ["none"]) else "pinned_hot_set"]
        for key in path:
            value = value[key]
        assert value == node["default"], ".".join(path)
        checked += 1
    assert checked >= 20


def _misspelt(key):
    return key[:-1] if len(key) > 3 else key + "x"


@pytest.mark.parametrize("path", [p for p, _ in schema_keys() if p[-1] != "*"], ids=".".join)
def test_a_misspelt_key_is_refused_with_did_you_mean(path):
    config = value = {}
    for key in path[:-1]:
        value[key if key != "*" else "blocks.*"] = {}
        value = value[key if key != "*" else "blocks.*"]
    if path[:-1] == ("offload",) and path[-1] != "policy":
        value["policy"] = "pinned_hot_set"
    value[_misspelt(path[-1])] = 1
    with pytest.raises(memscale.ConfigError) as info:
        memscale.Config(**config)
    assert f'did you mean "{path[-1]}"?' in str(info.value)


def test_schema_is_a_json_schema_the_defaults_and_the_example_satisfy():
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    validator = jsonschema.Draft202012Validator(SCHEMA)
    validator.validate(json.loads(_C.config_example_json()))
    validator.validate(memscale.Config().to_dict())
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"mode": "fast"})


def test_docs_config_command_checks_and_writes(tmp_path, capsys):
    page = tmp_path / "config.md"
    page.write_text("stale\n")
    assert cli_main(["docs", "config", "--check", "--output", str(page)]) == 1
    assert page.read_text() == "stale\n"
    assert cli_main(["docs", "config", "--output", str(page)]) == 0
    assert page.read_text(encoding="utf-8") == render_config_doc()
    assert cli_main(["docs", "config", "--check", "--output", str(page)]) == 0
    assert "up to date" in capsys.readouterr().out
