"""Ratio goals and the check that fails when one is missed. The goals ship in the package
(``memscale/bench/goals.json``, beside this module), so ``memscale bench --check`` works
from an installed wheel.

A goal: ``{"id", "scenario", "ratio", "op": "<=" | ">=", "goal", "tolerance", "where": {...},
"issue", "description"}``. It applies to every record of its scenario whose fields match
``where``; ``tolerance`` is relative (0.05 = the goal may be missed by 5%). A wall-clock
goal may give a wider ``quick_tolerance`` for records of ``--quick`` runs: those are the
small smoke configurations CI times on a shared machine, where it catches a regression
(a slowdown past the wider bound) without failing on noise; the committed full runs are
held to ``tolerance``.

A goal with ``known_miss`` (a sentence: since when and why it is missed, and where it is
tracked) is still checked and reported on every record, as ``KNOWN MISS`` when missed, but
a miss does not fail the run: a regression already found and open, not a new one. With
``known_miss_where`` (fields a record must match, like ``where``) only the matching
records' misses are known; the goal's other records fail as usual.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from .records import ratio_text


@dataclass(frozen=True)
class GoalResult:
    goal_id: str
    scenario: str
    passed: bool
    message: str


def default_goals_path() -> Path:
    """The goals file shipped with the package: the one ``memscale bench --check`` reads."""
    return Path(__file__).resolve().with_name("goals.json")


def load_goals(path: str | Path) -> list[dict[str, Any]]:
    from ..errors import ConfigError

    try:
        goals = json.loads(Path(path).read_text())["goals"]
    except (OSError, KeyError, json.JSONDecodeError) as error:
        raise ConfigError(f"goals file {path}: cannot read a 'goals' array ({error})") from error
    for g in goals:
        missing = {"id", "scenario", "ratio", "op", "goal", "tolerance"} - set(g)
        if missing:
            raise ConfigError(f"goals file {path}: goal {g.get('id', '?')} lacks {', '.join(sorted(missing))}")
        if g["op"] not in ("<=", ">="):
            raise ConfigError(f"goals file {path}: goal {g['id']}: op {g['op']!r}, allowed: '<=', '>='")
    return goals


def _matches(record: dict[str, Any], where: dict[str, Any]) -> bool:
    return all(record.get(k) == v for k, v in where.items())


def check(records: list[dict[str, Any]], goals: list[dict[str, Any]], scenarios: list[str] | None = None,
          timing: bool = True) -> list[GoalResult]:
    """Every goal whose scenario was run is checked against each matching record; a goal
    with no matching record fails (the benchmark did not produce what it promises). A goal
    marked ``optional`` applies only to records that carry its ratio. ``timing=False``
    leaves out goals marked ``timing`` (wall-clock ratios, meaningless on a busy machine)."""
    results: list[GoalResult] = []
    ran = {r.get("scenario") for r in records} if scenarios is None else set(scenarios)
    for g in goals:
        if g["scenario"] not in ran or (g.get("timing") and not timing):
            continue
        matching = [r for r in records if r.get("scenario") == g["scenario"] and _matches(r, g.get("where", {}))]
        if not matching:
            results.append(GoalResult(g["id"], g["scenario"], False, f"{g['id']}: no record of {g['scenario']} matches {g.get('where', {})}"))
            continue
        for r in matching:
            value = r.get("ratios", {}).get(g["ratio"])
            if value is None and g.get("optional"):
                continue
            label = f"{g['id']} [{r.get('model', '')} {r.get('label', '')}]".replace(" ]", "]")
            if value is None:
                results.append(GoalResult(g["id"], g["scenario"], False, f"{label}: record has no ratio {g['ratio']!r}"))
                continue
            tolerance = g.get("quick_tolerance", g["tolerance"]) if r.get("quick") else g["tolerance"]
            limit = g["goal"] * (1 + tolerance) if g["op"] == "<=" else g["goal"] * (1 - tolerance)
            ok = value <= limit if g["op"] == "<=" else value >= limit
            kind = "quick-run tolerance" if r.get("quick") and "quick_tolerance" in g else "tolerance"
            message = f"{label}: {g['ratio']} = {ratio_text(value)}, goal {g['op']} {g['goal']} ({kind} {tolerance:.0%})"
            if not ok and g.get("known_miss") and _matches(r, g.get("known_miss_where", {})):
                ok, message = True, f"KNOWN MISS {message}; {g['known_miss']}"
            results.append(GoalResult(g["id"], g["scenario"], ok, message))
    return results
