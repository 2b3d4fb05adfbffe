"""The auto_policy dataset: for each model and budget, every strategy of the learned stage
(``_C.policy_strategies()``: which techniques stay eligible) planned by the rule engine,
applied by ``memscale.wrap`` and measured, and as the label the strategy whose measured step
was fastest within the budget.

One case is one model (a family of the reference zoo or a Hugging Face model built from a
config) at one budget, a fraction of its measured unoptimized step peak. Per strategy:
``wrap`` with that strategy's narrowed Config (the techniques it turns off set to "off",
as the stage narrows a default Config), the measured peak over a few AdamW steps
(``memscale.track_memory("cpu")``: model, optimizer state and memscale's own buffers in the
scope) and the step time: medians of interleaved rounds in one process, all strategies of
the case timed together. Strategies whose plan has the same techniques per layer as an
earlier one's run the same step and are measured once.

Budgets per model: 85% and 70% of its measured unoptimized peak, and the rules' minimum
budget and 15% above it, where strategies differ most.

Label: "rules" (the Config as given) unless another strategy fits (measured peak within
the runtime's 5% tolerance of the budget) and its median paired ratio to "rules" is at most
``1 - MARGIN``: a narrower set must be clearly faster to be learned, so that noise on a
shared machine does not become a label. Budgets the rule engine refuses have no case.

Each case keeps its profiled graph (JSON) and the dataset its hardware, so the features are
recomputed by the engine (``_C.policy_features``) when the model is trained: the features
can change without measuring again.

    python -m memscale.policy.dataset [--quick] [--out python/memscale/policy/data/dataset.json]
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import pathlib
from dataclasses import dataclass
from typing import Any, Callable

import torch

from memscale import _C
from memscale.api import plan_of, wrap
from memscale.bench.timing import fixed_threads, interleave
from memscale.config import Config
from memscale.errors import InfeasibleBudgetError
from memscale.hardware import detect_hardware
from memscale.memory import track_memory
from memscale.planning import plan
from memscale.profiler.profile import profile
from memscale.progress import progress_iter
from memscale.testing import hf_models, models
from memscale.testing.measure import measured_step_peak, step_loss

log = logging.getLogger("memscale")

DATA = pathlib.Path(__file__).parent / "data"
FORMAT = "memscale.auto_policy_dataset/1"
FRACTIONS = (0.85, 0.70)
QUICK_FRACTIONS = (0.70,)
MARGIN = 0.03
PEAK_TOLERANCE = 1.05  # the runtime's first-step check re-plans past 5% (runtime/training/verify.py)
ROUNDS, WARMUP = 9, 1
MEASURED_STEPS = 3


@dataclass
class Case:
    """A fresh model and its step: ``loss_fn(model(*args, **kwargs))`` (None: the model's own loss)."""

    family: str
    name: str
    model: torch.nn.Module
    inputs: Any
    loss_fn: Callable[[Any], torch.Tensor] | None


def _zoo(name: str, family: str) -> Callable[[], Case]:
    def build() -> Case:
        model = models.build(name)
        sizes = dict(batch=16) if family in ("vit", "cnn") else dict(batch=8, seq=128)
        inputs = models.example_inputs(name, model, labels=True, **sizes)
        return Case(family, f"zoo/{name}", model, tuple(inputs), None)  # the loss inside the model
    return build


def _hf(name: str, family: str) -> Callable[[], Case]:
    def build() -> Case:
        case = hf_models.build(name, batch=8, seq=96, labels=False)  # the loss outside: the plain loop
        return Case(family, f"hf/{name}", case.model, case.inputs, case.loss_fn)
    return build


#: (builder, family). Families group architectures for the held-out evaluation.
MODELS: list[Callable[[], Case]] = [
    _zoo("gpt", "gpt"), _hf("gpt2", "gpt"),
    _zoo("llama", "llama"), _hf("llama", "llama"), _hf("qwen2", "llama"),
    _zoo("encoder", "encoder"), _hf("bert", "encoder"),
    _zoo("t5", "t5"), _hf("t5", "t5"),
    _zoo("vit", "vit"), _hf("vit", "vit"),
    _zoo("resnet", "cnn"),
]
QUICK_MODELS = [MODELS[0], MODELS[11]]


def _call(case: Case, model: torch.nn.Module) -> torch.Tensor:
    args, kwargs = (case.inputs, {}) if isinstance(case.inputs, tuple) else ((), dict(case.inputs))
    out = model(*args, **kwargs)
    return case.loss_fn(out) if case.loss_fn is not None else step_loss(out)


def _measure(build: Callable[[], Case], config: Config) -> dict[str, Any]:
    """wrap with ``config`` inside one tracking scope; the peak over MEASURED_STEPS steps after a warm-up."""
    gc.collect()
    torch.manual_seed(0)
    with track_memory("cpu") as tracker:
        case = build()
        loss_fn = None if case.loss_fn is None else (lambda out, batch: case.loss_fn(out))
        wrap(case.model, config, example_inputs=case.inputs, training=True, optimizer="adamw", loss_fn=loss_fn)
        optimizer = torch.optim.AdamW(case.model.parameters(), lr=1e-3)

        def step() -> None:
            _call(case, case.model).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step()
        peaks = []
        for _ in range(MEASURED_STEPS):
            tracker.reset_peak()
            step()
            peaks.append(int(tracker.peak_bytes))
    techniques = {layer.name: list(layer.techniques) for layer in plan_of(case.model).layers if layer.techniques}
    return {"peak": max(peaks), "step": step, "techniques": techniques}


def _graph(case: Case) -> Any:
    loss_fn = None if case.loss_fn is None else (lambda out, batch: case.loss_fn(out))
    return profile(case.model, case.inputs, training=True, optimizer="adamw", loss_fn=loss_fn)


def _budgets(graph: Any, base_peak: int, fractions: tuple[float, ...]) -> list[int]:
    """Fractions of the measured peak, and the rules' minimum and 15% above it (where the
    plans differ most between strategies), those below the largest fraction."""
    try:
        plan(graph, Config(memory_budget=1))
        raise AssertionError("a 1-byte budget was planned")
    except InfeasibleBudgetError as refusal:
        least = int(refusal.min_budget_bytes)
    budgets = {int(base_peak * f) for f in fractions}
    budgets |= {b for b in (least, int(least * 1.15)) if b < base_peak * max(fractions)}
    return sorted(budgets, reverse=True)


def _case_record(build: Callable[[], Case], budget: int, base_peak: int, graph: Any) -> dict[str, Any] | None:
    probe = build()
    fraction = budget / base_peak
    record: dict[str, Any] = {"family": probe.family, "model": probe.name, "budget_fraction": fraction,
                              "budget_bytes": budget, "unoptimized_peak_bytes": base_peak,
                              "graph": json.loads(graph.to_json()), "strategies": {}}
    runs: dict[str, dict[str, Any]] = {}
    planned: dict[str, dict[str, list[str]]] = {}
    for name, off, _ in _C.policy_strategies():
        config = Config(memory_budget=budget, techniques={t: "off" for t in off})
        try:  # the plan wrap applies is memscale.plan's on the profiled graph: one wrap per distinct plan
            techniques = {layer.name: list(layer.techniques) for layer in plan(graph, config).layers if layer.techniques}
            same = next((other for other, t in planned.items() if t == techniques), None)
            run = runs[same] if same is not None else _measure(build, config)
        except InfeasibleBudgetError as refusal:
            record["strategies"][name] = {"refused": True, "min_budget_bytes": refusal.min_budget_bytes}
            continue
        row = {"refused": False, "techniques": run["techniques"], "measured_peak_bytes": run["peak"],
               "fits": run["peak"] <= PEAK_TOLERANCE * budget}
        if same is not None:
            row["same_plan_as"] = same
        else:
            runs[name] = run
            planned[name] = techniques
        record["strategies"][name] = row
    if record["strategies"]["rules"].get("refused", True):
        log.info("policy dataset: %s at %.0f%% refused by the rules; no case", record["model"], fraction * 100)
        return None
    timing = interleave({n: r["step"] for n, r in runs.items()}, rounds=ROUNDS, warmup=WARMUP)
    for name, row in record["strategies"].items():
        if row.get("refused"):
            continue
        key = row.get("same_plan_as", name)  # "rules" is planned first: it is never a copy
        row["step_time_s"] = timing.median(key)
        row["ratio_vs_rules"] = 1.0 if key == "rules" else timing.ratio(key, "rules")
    record["timing"] = timing.method()
    record["label"] = label_of(record["strategies"])
    log.info("policy dataset: %s at %.0f%%: label %s (%s)", record["model"], fraction * 100, record["label"],
             {n: round(r.get("ratio_vs_rules", float("nan")), 3) for n, r in record["strategies"].items()})
    return record


def label_of(strategies: dict[str, dict[str, Any]]) -> str:
    """"rules" unless a fitting strategy is at least MARGIN faster (median paired ratio);
    then the fastest such one (ties: the order of ``_C.policy_strategies()``)."""
    best, best_ratio = "rules", 1.0 - MARGIN
    for name, _, _ in _C.policy_strategies():
        row = strategies.get(name, {})
        if row.get("refused", True) or not row.get("fits"):
            continue
        if row["ratio_vs_rules"] <= best_ratio and (best == "rules" or row["ratio_vs_rules"] < best_ratio):
            best, best_ratio = name, row["ratio_vs_rules"]
    return best


def build_dataset(quick: bool) -> dict[str, Any]:
    hardware = detect_hardware()
    builders = QUICK_MODELS if quick else MODELS
    fractions = QUICK_FRACTIONS if quick else FRACTIONS
    cases = []
    with fixed_threads():
        for build in progress_iter(builders, desc="policy dataset", unit="model"):
            probe = build()
            base = measured_step_peak(probe.model, probe.inputs, loss_fn=probe.loss_fn)
            graph = _graph(build())
            del probe
            for budget in _budgets(graph, base, fractions):
                record = _case_record(build, budget, base, graph)
                if record is not None:
                    cases.append(record)
    return {"format": FORMAT, "hardware": json.loads(hardware.to_json()), "margin": MARGIN,
            "peak_tolerance": PEAK_TOLERANCE, "fractions": list(fractions),
            "measurement": "track_memory('cpu') peak over 3 AdamW steps after a warm-up, model and optimizer in the "
                           "scope; step times: medians of interleaved rounds, ratios: median paired per-round ratio",
            "cases": cases}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two models at one budget (a check, not the dataset)")
    parser.add_argument("--out", type=pathlib.Path, default=DATA / "dataset.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s: %(message)s")
    dataset = build_dataset(args.quick)
    args.out.write_text(json.dumps(dataset, sort_keys=True, indent=1) + "\n")
    log.info("policy dataset: %d cases written to %s", len(dataset["cases"]), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
