"""auto_policy held out by model family: on the committed dataset
(python/memscale/policy/data/dataset.json, measured by ``python -m memscale.policy.dataset``),
a tree trained without each family picks a strategy for that family's cases
(:mod:`memscale.policy.evaluate`); the record gives the share of cases whose measured step is
not slower than the rules-only plan's, the share within the budget and the mean speed-up.
The measurements are the dataset's (every strategy of a case timed in one interleaved run);
this scenario re-trains and re-predicts, so quick and full are the same and take seconds.

    python -m memscale.bench.scenarios.auto_policy [--quick] [--out FILE]
"""
from __future__ import annotations

import json
import logging
from typing import Any

from memscale.policy.evaluate import evaluate
from memscale.policy.train import DATA, dataset_digest

log = logging.getLogger("memscale")


def run(quick: bool) -> list[dict[str, Any]]:
    path = DATA / "dataset.json"
    dataset = json.loads(path.read_text())
    result = evaluate(dataset)
    record = {
        "scenario": "auto_policy", "model": f"{len(dataset['cases'])} cases, families {', '.join(result['families'])}",
        "label": "leave-one-family-out", "dataset_sha256": dataset_digest(path),
        "cases": result["cases"], "chosen_not_rules": result["chosen_not_rules"],
        "label_not_rules": result["label_not_rules"],
        "measurement": dataset["measurement"],
        "ratios": {"not_slower_share": result["not_slower_share"],
                   "within_budget_share": result["within_budget_share"],
                   "mean_speedup": result["mean_speedup"]},
    }
    log.info("auto_policy held out by family: %s", record["ratios"])
    return [record]


if __name__ == "__main__":
    from memscale.bench.records import scenario_main

    raise SystemExit(scenario_main(run))
