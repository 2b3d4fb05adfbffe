"""Held-out evaluation of the auto_policy stage, by model family: for each family, a tree is
trained on the other families' cases (:func:`memscale.policy.train.fit`, the same
settings), and each held-out case gets the strategy the engine's tree walk picks
(``_C.policy_predict``, the C++ code the stage runs). Its measured outcome comes from the
dataset, where every strategy of the case was measured in the same interleaved run: the
step time ratio to the rules-only plan, and whether its measured peak fits the budget. A
strategy the rule engine refused at that budget is planned as the rules alone (the stage's
fallback), so its ratio is 1.0.
"""
from __future__ import annotations

import json
import statistics
from typing import Any

from memscale import _C
from memscale.config import Config
from memscale.policy.train import fit, hardware_of, model_text


def outcome(case: dict[str, Any], strategy: str) -> tuple[float, bool, str]:
    """(step time / rules-only step time, fits the budget, the strategy that ran) of ``strategy`` on ``case``."""
    row = case["strategies"].get(strategy, {"refused": True})
    if row.get("refused"):
        strategy, row = "rules", case["strategies"]["rules"]
    return float(row["ratio_vs_rules"]), bool(row["fits"]), strategy


def evaluate(dataset: dict[str, Any]) -> dict[str, Any]:
    hardware = hardware_of(dataset)
    cases = dataset["cases"]
    families = sorted({c["family"] for c in cases})
    per_case = []
    for family in families:
        train_on = [c for c in cases if c["family"] != family]
        model = model_text(fit(dataset, train_on, f"all families but {family}"))
        for case in (c for c in cases if c["family"] == family):
            graph = _C.ModelGraph.from_json(json.dumps(case["graph"], sort_keys=True))
            chosen = _C.policy_predict(model, graph, Config(memory_budget=int(case["budget_bytes"])).cpp, hardware)
            ratio, fits, ran = outcome(case, chosen)
            per_case.append({"family": family, "model": case["model"], "budget_fraction": case["budget_fraction"],
                             "chosen": chosen, "ran": ran, "label": case["label"], "ratio_vs_rules": ratio,
                             "fits": fits})
    ratios = [c["ratio_vs_rules"] for c in per_case]
    return {
        "cases": per_case,
        "families": families,
        "not_slower_share": sum(1 for r in ratios if r <= 1.0) / len(ratios),
        "within_budget_share": sum(1 for c in per_case if c["fits"]) / len(per_case),
        "mean_speedup": statistics.fmean(1.0 / r for r in ratios),
        "chosen_not_rules": sum(1 for c in per_case if c["ran"] != "rules"),
        "label_not_rules": sum(1 for c in per_case if c["label"] != "rules"),
    }
