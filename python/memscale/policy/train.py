"""Train the auto_policy model: a decision tree over the engine's features
(``_C.policy_features``) of each dataset case, labelled with the strategy measured fastest
within the budget (:mod:`memscale.policy.dataset`). scikit-learn's CART with a fixed
``random_state`` and shallow depth: the same dataset gives the same tree, and the model file
(``data/model.json``) is written byte for byte the same (sorted keys, thresholds as Python
writes float64 exactly).

    python -m memscale.policy.train [--dataset FILE] [--out FILE]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import pathlib
from typing import Any, Iterable

from memscale import _C
from memscale.config import Config

log = logging.getLogger("memscale")

DATA = pathlib.Path(__file__).parent / "data"
MODEL_FORMAT = "memscale.auto_policy/1"
#: Shallow and with several cases per leaf: a handful of models per family, noisy labels.
TREE = dict(max_depth=3, min_samples_leaf=3, random_state=0)


def features_of(case: dict[str, Any], hardware: Any) -> list[float]:
    """The engine's features of planning the case's graph at its budget (default techniques)."""
    graph = _C.ModelGraph.from_json(json.dumps(case["graph"], sort_keys=True))
    config = Config(memory_budget=int(case["budget_bytes"]))
    return [value for _, value in _C.policy_features(graph, config.cpp, hardware)]


def hardware_of(dataset: dict[str, Any]) -> Any:
    return _C.Hardware.from_json(json.dumps(dataset["hardware"], sort_keys=True))


def fit(dataset: dict[str, Any], cases: Iterable[dict[str, Any]], description: str) -> dict[str, Any]:
    """The model file (as a dict) of a tree fitted on ``cases``."""
    from sklearn.tree import DecisionTreeClassifier

    cases = list(cases)
    if not cases:
        raise ValueError("auto_policy training: no cases to fit")
    hardware = hardware_of(dataset)
    x = [features_of(c, hardware) for c in cases]
    y = [c["label"] for c in cases]
    tree = DecisionTreeClassifier(**TREE).fit(x, y)
    labels = [str(c) for c in tree.classes_]
    t = tree.tree_
    nodes = []
    for i in range(t.node_count):
        if t.children_left[i] == -1:
            counts = [float(v) for v in t.value[i][0]]
            nodes.append({"label": counts.index(max(counts)), "samples": int(t.n_node_samples[i])})
        else:
            nodes.append({"feature": int(t.feature[i]), "threshold": float(t.threshold[i]),
                          "left": int(t.children_left[i]), "right": int(t.children_right[i])})
    return {"format": MODEL_FORMAT, "features": list(_C.policy_feature_names()), "labels": labels,
            "nodes": nodes, "trained_on": description, "tree": {k: v for k, v in TREE.items()},
            "label_counts": {label: y.count(label) for label in sorted(set(y))}}


def dataset_digest(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def model_text(model: dict[str, Any]) -> str:
    return json.dumps(model, sort_keys=True, indent=1) + "\n"


def train(dataset_path: pathlib.Path) -> str:
    """The model file's text for the whole dataset at ``dataset_path``."""
    dataset = json.loads(dataset_path.read_text())
    cases = dataset["cases"]
    families = sorted({c["family"] for c in cases})
    description = (f"{len(cases)} cases of {len(families)} families ({', '.join(families)}), dataset "
                   f"sha256 {dataset_digest(dataset_path)}")
    return model_text(fit(dataset, cases, description))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=pathlib.Path, default=DATA / "dataset.json")
    parser.add_argument("--out", type=pathlib.Path, default=DATA / "model.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s: %(message)s")
    text = train(args.dataset)
    args.out.write_text(text)
    log.info("auto_policy model written to %s (%d nodes); rebuild the package to compile it in", args.out,
             len(json.loads(text)["nodes"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
