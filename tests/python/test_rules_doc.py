"""docs/rules.md lists every rule id the engine can record, each with an example, and no
id the engine no longer has."""
import re
from pathlib import Path

import memscale

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "include" / "memscale" / "core"
RULES_DOC = ROOT / "docs" / "rules.md"

# A rule id is a string literal "family.name" in the rule and engine headers.
_LITERAL = re.compile(r'"([a-z_]+\.[a-z_]+)"')
_COMMENT = re.compile(r"//.*$", re.MULTILINE)


def _config_paths(node: dict, prefix: str = "") -> set[str]:
    paths = set()
    for key, child in node.get("properties", {}).items():
        paths |= {prefix + key} | _config_paths(child, f"{prefix}{key}.")
    return paths


def engine_rule_ids() -> set[str]:
    sources = [*sorted((CORE / "rules").glob("*.hpp")), *sorted((CORE / "engine").glob("*.hpp")), CORE / "engine.hpp"]
    ids = set()
    for source in sources:
        ids |= set(_LITERAL.findall(_COMMENT.sub("", source.read_text())))
    return ids - _config_paths(memscale.config_schema())  # "offload.disk_dir" in a message is a key, not a rule


def documented_rules() -> dict[str, list[str]]:
    """rule id -> the cells of its row in the rule tables of docs/rules.md."""
    rows = {}
    for line in RULES_DOC.read_text().splitlines():
        match = re.match(r"\|\s*`([a-z_]+\.[a-z_]+)`\s*\|(.*)\|\s*$", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split("|")]
    return rows


def test_the_scan_finds_the_rule_families():
    ids = engine_rule_ids()
    assert len(ids) >= 25, sorted(ids)
    families = {rule_id.split(".")[0] for rule_id in ids}
    assert {"checkpoint", "tile", "offload_activations", "offload_weights", "override", "skip", "fit"} <= families


def test_every_rule_id_the_engine_records_is_in_rules_md_with_an_example():
    documented = documented_rules()
    missing = sorted(engine_rule_ids() - set(documented))
    assert not missing, f"docs/rules.md has no row for {missing}: add `| id | decision | example reason |`"
    without_example = sorted(rule_id for rule_id in engine_rule_ids() if not documented[rule_id][-1].strip("` "))
    assert not without_example, f"docs/rules.md rows without an example reason: {without_example}"


def test_rules_md_lists_no_rule_the_engine_no_longer_has():
    stale = sorted(set(documented_rules()) - engine_rule_ids())
    assert not stale, f"docs/rules.md documents rule ids no header emits: {stale}"
