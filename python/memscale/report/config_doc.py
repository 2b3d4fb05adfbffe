"""Renders docs/config.md from the Config schema (``memscale.config_schema()``).

The schema gives every key, default, allowed value and meaning; this module only lays
them out in tables between a fixed header and footer, and quotes the messages the
validator really gives for a few bad inputs. The output depends on nothing but the
schema and the validator, so the committed page can be checked against it.

Example:
    >>> from memscale.report.config_doc import render_config_doc
    >>> render_config_doc().startswith("<!-- Generated")
    True
"""
from __future__ import annotations

import json
from typing import Any, Iterator

from .. import _C

REGENERATE = "PYTHONPATH=python python -m memscale docs config"

HEADER = f"""\
<!-- Generated from the Config schema (include/memscale/core/config_schema.hpp) by
     `{REGENERATE}`. Edit the schema or python/memscale/report/config_doc.py, not this file. -->
# Config reference

`memscale.Config(**kwargs)` (Python) and `memscale::Config::from_json_text` (C++) accept the
same keys. Validation is strict: an unknown key (with a did-you-mean suggestion), a wrong
type, a negative or unparsable size, a percentage outside 0–100 or gpu + cpu over 100, an
unknown mode or technique — each raises `ConfigError` naming the key, the value and what is
allowed. A Config is immutable once built; `to_json()` writes every key (defaults included),
sorted, so equal configs give identical text.

This page is generated from the Config schema, the one account of the keys that the parser
also reads its key sets and defaults from: `memscale.config_schema()` in Python,
`memscale::config_schema()` in C++ (`include/memscale/core/config_schema.hpp`), a JSON
Schema with `x-` annotations (`x-policies`: the offload policies a key applies to).

Sizes are integer bytes or strings such as `"6GiB"`, `"512MB"`, `"1.5 GB"` (units B, KB,
MB, GB, TB = powers of 1000; KiB, MiB, GiB, TiB = powers of 1024; case-insensitive).
"""

ERRORS_INTRO = """\
## Errors

`tests/data/bad_configs.json` is the table of bad inputs and the message each gives; the
C++ and the Python test suites both check every row. Examples, with the messages the
validator gives:
"""

FOOTER = """\
## How the decision engine reads these keys

[rules.md](rules.md) and [memory-model.md](memory-model.md) describe the engine; in short:

- `mode`: `auto` applies techniques cheapest first until the predicted peak fits the
  budget; `min_memory` applies every technique that still lowers the peak (the smallest
  plan the Config allows, which must still fit the budget); `off` applies only what the
  Config forces `on` and never raises (the trace warns when the predicted peak exceeds the
  budget).
- `memory_budget` is per device: with several GPUs each runs a data-parallel replica and
  the plan is made for the smallest GPU.
- `techniques` / `layer_overrides`: `"on"` is always applied, `"off"` never. A glob
  beats the global switch; two matching globs that disagree are a `ConfigError` naming
  both. A global `tiling: "on"` tiles the layers that can be tiled; a glob forcing tiling
  on a layer without a tileable axis is a `ConfigError`, as is forcing `offload_weights`
  on a pinned layer. A glob that matches no layer is reported in the plan's trace.
- `force_optimize`: plan a tiny model (unoptimized peak ≤ 10% of the device at pressure
  ≤ 0.5) instead of skipping it.
- `offload`: `policy: "none"` leaves weight paging to the engine (a plan that pages
  weights then says `policy: "budget"` with the resident size it needs);
  `budget`/`pinned_hot_set` page weights until resident weights plus the prefetch window
  (`1 + prefetch_n_ahead` layers) fit `ram_bytes`; `pinned_hot_set` never pages the
  embeddings, the output head (kind `lm_head`) or the last `pin_last_n_layers` layers of
  kind block/attention. `prefetch_n_ahead` sizes the window in the memory model and is
  copied into the plan for the pager.
- `tiers` applies to inference plans: `weights`/`kv_cache` fix the share kept on the
  device (on a CPU-only machine `gpu` + `cpu` both mean host RAM, the device), realised
  layer by layer (`LayerPlan.weight_tier`, `LayerPlan.kv_tier`); `activations` must keep
  `gpu` at 100 for inference (the model's own forward holds the activations between its
  layers, so they cannot be moved; anything else is a `ConfigError` naming
  `tiers.activations`). Training plans ignore `tiers` (said in the trace).
- `reservation`: the inference activation reservation; `safety_factor` can be
  replaced by a calibrated one (`memscale.calibrate_reservation`).
- `auto_policy`: the learned stage (docs/auto-policy.md) picks one strategy
  (`rules`, `no_offload`, `no_tiling`, `checkpoint_only`) from features of the graph,
  the hardware and the budget; techniques you set `on` or `off` stay as set, the mode
  stays yours (it chooses under mode `auto` only), and inference plans are the rules'.
  The trace names the choice and the comparisons that led to it.
"""

# Bad inputs whose real messages the Errors section quotes.
ERROR_EXAMPLES: list[dict[str, Any]] = [
    {"memroy_budget": "4GiB"},
    {"memory_budget": "-4GiB"},
    {"memory_budget": 1.5},
    {"techniques": {"checkpoint": "sometimes"}},
    {"tiers": {"weights": {"gpu": 80, "cpu": 30}}},
    {"offload": {"policy": "budget"}},
    {"offload": {"policy": "budget", "ram_bytes": "1GiB", "pin_embeddings": True}},
]


def _code(value: Any) -> str:
    return f"`{json.dumps(value)}`"


def _resolve(node: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    return {**schema["$defs"][ref.removeprefix("#/$defs/")], **{k: v for k, v in node.items() if k != "$ref"}}


def _is_record(node: dict[str, Any]) -> bool:
    return "properties" in node


def _is_map(node: dict[str, Any]) -> bool:
    return "properties" not in node and isinstance(node.get("additionalProperties"), dict)


def _bounds(node: dict[str, Any]) -> str:
    """'in [0, 1)', '> 0', '≥ 1' from the JSON Schema bound keywords."""
    def bound(inclusive: str, exclusive: str) -> tuple[bool, Any] | None:
        if inclusive in node:
            return True, node[inclusive]
        return (False, node[exclusive]) if exclusive in node else None

    low, high = bound("minimum", "exclusiveMinimum"), bound("maximum", "exclusiveMaximum")
    if low and high:
        return f"in {'[' if low[0] else '('}{low[1]}, {high[1]}{']' if high[0] else ')'}"
    if low:
        return f"{'≥' if low[0] else '>'} {low[1]}"
    if high:
        return f"{'≤' if high[0] else '<'} {high[1]}"
    return ""


def _anchor(name: str) -> str:
    return name.replace(".", "").lower()


def allowed(node: dict[str, Any], name: str) -> str:
    """The values a key takes, in words, from its schema node."""
    if "oneOf" in node:
        return "; ".join(allowed(alt, name) + (f": {alt['description']}" if "description" in alt else "")
                         for alt in node["oneOf"])
    if "enum" in node:
        meanings = node.get("x-enum-descriptions")
        if not meanings:
            return ", ".join(_code(v) for v in node["enum"])
        return "; ".join(f"{_code(v)}: {meanings[v]}" for v in node["enum"])
    if _is_record(node) or _is_map(node):
        return f"an object, see [`{name}`](#{_anchor(name)})"
    kind = node["type"]
    if node.get("format") == "size":
        sizes = {"integer": "bytes", "string": "a size string"}
        words = sizes.get(kind, "a size") if isinstance(kind, str) else "a size"
    elif kind == "boolean":
        return "`true`, `false`"
    elif kind == "string":
        return "a non-empty string" if node.get("minLength", 0) > 0 else "a string"
    elif kind == "null":
        return "`null`"
    else:
        words = {"integer": "an integer", "number": "a number"}[kind]
    return f"{words} {_bounds(node)}".strip()


def default(node: dict[str, Any], required: bool) -> str:
    if "default" not in node:
        policies = node.get("x-required-for-policies")
        if policies:
            return "required with " + ", ".join(f"`{p}`" for p in policies)
        return "required" if required else "see below"
    text = _code(node["default"])
    if node.get("format") == "size" and isinstance(node["default"], int):
        text += f" ({_C.format_bytes(node['default'])})"
    if "x-default-note" in node:
        text += f" = {node['x-default-note']}"
    return text


def _policies(node: dict[str, Any], schema: dict[str, Any]) -> str:
    policies = node.get("x-policies", [])
    every = schema["properties"]["offload"]["properties"]["policy"]["enum"]
    return "all" if policies == every else ", ".join(policies)


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def _ref_name(raw: dict[str, Any]) -> str | None:
    return raw["$ref"].removeprefix("#/$defs/") if "$ref" in raw else None


def table(record: dict[str, Any], prefix: str, schema: dict[str, Any]) -> str:
    """One row per key of `record`; a policies column when its keys carry x-policies, a
    default column when any key has a default or is required."""
    rows = [(key, raw, _resolve(raw, schema)) for key, raw in record["properties"].items()]
    required = set(record.get("required", []))
    with_policies = any("x-policies" in node for _, _, node in rows)
    with_default = any("default" in node or key in required or "x-required-for-policies" in node
                       for key, _, node in rows)
    head = ["key", *(["policies"] if with_policies else []), *(["default"] if with_default else []), "allowed", "meaning"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, raw, node in rows:
        cells = [f"`{key}`"]
        if with_policies:
            cells.append(_policies(node, schema))
        if with_default:
            cells.append(default(node, key in required))
        cells += [allowed(node, _ref_name(raw) or f"{prefix}{key}"), node["description"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def sections(record: dict[str, Any], prefix: str, schema: dict[str, Any], seen_defs: set[str]) -> Iterator[str]:
    """A section per object-valued key of `record`, depth first, and one per $defs entry
    the first time a key refers to it."""
    for key, raw in record["properties"].items():
        node, path, ref = _resolve(raw, schema), f"{prefix}{key}", _ref_name(raw)
        if ref is not None:
            if ref not in seen_defs:
                seen_defs.add(ref)
                users = ", ".join(f"`{k}`" for k, v in record["properties"].items() if _ref_name(v) == ref)
                definition = schema["$defs"][ref]
                yield f"### `{ref}`\n\nThe value of {users}: {definition['description']}.\n"
                yield table(definition, "", schema)
        elif _is_record(node):
            yield f"## `{path}`\n\n{_sentence(node['description'])}\n"
            yield table(node, f"{path}.", schema)
            yield from sections(node, f"{path}.", schema, seen_defs)
        elif _is_map(node):
            names, value = node["propertyNames"], node["additionalProperties"]
            not_empty = "a non-empty " if names.get("minLength") else ""
            count = "one or more" if value.get("minProperties") == 1 else f"at least {value.get('minProperties', 0)}"
            yield (f"## `{path}`\n\n{_sentence(node['description'])}\n\n"
                   f"Each key: {not_empty}{names['description']}, e.g. {_code(names['examples'][0])}. Each value: an "
                   f"object with {count} of these keys:\n")
            yield table(value, f"{path}.*.", schema)


def error_examples() -> list[tuple[dict[str, Any], str]]:
    """Each of ERROR_EXAMPLES with the message the validator gives for it."""
    from ..config import Config
    from ..errors import ConfigError

    out = []
    for bad in ERROR_EXAMPLES:
        try:
            Config(**bad)
        except ConfigError as error:
            out.append((bad, str(error)))
        else:
            raise RuntimeError(f"config_doc.ERROR_EXAMPLES: {bad} is accepted; give an input the validator refuses")
    return out


def render_config_doc() -> str:
    """The text of docs/config.md for this build's schema and validator."""
    schema = json.loads(_C.config_schema_json())
    example = json.loads(_C.config_example_json())
    parts = [HEADER, "## Keys\n", table(schema, "", schema)]
    parts += sections(schema, "", schema, set())
    parts.append("## Example\n\nA Config giving every key its example value from the schema:\n\n```json\n"
                 + json.dumps(example, indent=2, sort_keys=True) + "\n```\n")
    errors = "\n".join(f"{json.dumps(bad)}\n    {message}" for bad, message in error_examples())
    parts.append(ERRORS_INTRO + "\n```\n" + errors + "\n```\n")
    parts.append(FOOTER)
    return "\n".join(parts)
