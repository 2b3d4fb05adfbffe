"""Planning speed of the decision engine for 10, 100, 1,000 and 10,000 layers.

Writes one JSON record: per size, the median / min / max wall time of ``memscale.plan``
at a pressured budget (60% of the unoptimized peak: the greedy loop does real work) and
of the min-budget search (a budget of 1 byte: the full sequence, ending in
InfeasibleBudgetError), plus the machine. The target is 1,000 layers in under 20 ms.

    python -m memscale.bench.scenarios.planning_speed --out planning_speed.json
    python -m memscale.bench.scenarios.planning_speed --quick      # fewer repeats

Graphs are synthetic decoders (embedding, then norm / attention / MLP layers repeating,
then the LM head) sized like a 1B-parameter model per layer, built here so the benchmark
needs no fixtures; the engine sees them exactly as a profiled graph.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

SIZES = (10, 100, 1000, 10000)
TARGET_LAYERS, TARGET_MS = 1000, 20.0


def synthetic_graph(n: int) -> str:
    T, h, e = 4 * 1024, 1024, 2
    layers = []
    for i in range(n):
        kind = "embedding" if i == 0 else "lm_head" if i == n - 1 else ("norm", "attention", "mlp")[i % 3]
        params = {"norm": h, "attention": 4 * h * h, "mlp": 8 * h * h}.get(kind, 32000 * h)
        wobble = 1 + (i * 7919) % 5  # sizes vary with the index so ties do not dominate
        p = params * e
        layers.append({
            "index": i, "name": f"model.layers.{i}.{kind}", "kind": kind,
            "param_bytes": p, "grad_bytes": p, "optimizer_bytes": 2 * p,
            "activation_bytes": (5 if kind == "mlp" else 3) * T * h * e * wobble // 3,
            "transient_bytes": (2 * T * 32000 * e if kind == "lm_head" else 2 * T * h * e) + p,
            "input_bytes": T * h * e, "output_bytes": T * 32000 * e if kind == "lm_head" else T * h * e,
            "flops": 2 * T * params * wobble,
            "dims": {"hidden": h, "intermediate": 4 * h if kind == "mlp" else 0, "seq": 1024, "batch": 4},
            "tileable": ["seq", "batch"] if kind in ("mlp", "lm_head") else [],
        })
    return json.dumps({"model_name": f"Synthetic{n}", "dtype": "bfloat16", "batch": 4, "seq": 1024,
                       "training": True, "optimizer": "adamw", "input_bytes": T * 8, "layers": layers})


HARDWARE = json.dumps({"devices": [{"kind": "cuda", "index": 0, "name": "GPU", "total_bytes": 80 << 30}],
                       "host_total_bytes": 512 << 30, "offload_dir_free_bytes": 4 << 40})


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def summary(ms: list[float]) -> dict:
    return {"median_ms": round(statistics.median(ms), 3), "min_ms": round(min(ms), 3), "max_ms": round(max(ms), 3),
            "repeats": len(ms)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the JSON record here (default: print it)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (CI smoke run)")
    parser.add_argument("--device", default="auto", help="accepted for the suite's runner; planning runs on the CPU")
    args = parser.parse_args(argv)
    from memscale._C import Hardware, ModelGraph, __version__
    from memscale.config import Config
    from memscale.errors import InfeasibleBudgetError
    from memscale.planning import plan as make_plan
    hw = Hardware.from_json(HARDWARE)
    results = []
    for n in SIZES:
        repeats = (3 if n >= 10000 else 7) if args.quick else (5 if n >= 10000 else 31)
        g = ModelGraph.from_json(synthetic_graph(n))
        unoptimized = make_plan(g, hardware=hw, force_optimize=True, memory_budget=1 << 55).unoptimized_peak_bytes
        cfg = Config(memory_budget=unoptimized * 6 // 10)
        make_plan(g, cfg, hw)  # warm-up
        plan = make_plan(g, cfg, hw)
        pressured = timed(lambda: make_plan(g, cfg, hw), repeats)
        tiny = Config(memory_budget=1)

        def min_budget_search() -> None:
            try:
                make_plan(g, tiny, hw)
            except InfeasibleBudgetError:
                pass

        search = timed(min_budget_search, max(3, repeats // 3))
        results.append({
            "layers": n,
            "plan_at_60pct": summary(pressured),
            "min_budget_search": summary(search),
            "techniques_applied": sum(len(layer.techniques) for layer in plan.layers),
            "pressure": round(plan.pressure, 4),
        })
        print(f"{n:>6} layers: plan {results[-1]['plan_at_60pct']['median_ms']:.2f} ms (median of {len(pressured)}), "
              f"min-budget search {results[-1]['min_budget_search']['median_ms']:.2f} ms", file=sys.stderr)
    at_target = next(r for r in results if r["layers"] == TARGET_LAYERS)
    from memscale.bench.machine import machine_info
    from memscale.bench.records import write_records

    record = {
        "scenario": "planning_speed",
        "model": "synthetic transformer graph",
        "label": f"{TARGET_LAYERS} layers",
        "device": "cpu",
        "memscale_version": __version__,
        "quick": args.quick,
        "machine": machine_info(),
        "results": results,
        "ratios": {"plan_1000_layers_vs_20ms": at_target["plan_at_60pct"]["median_ms"] / TARGET_MS},
        "target": {"layers": TARGET_LAYERS, "max_ms": TARGET_MS,
                   "median_ms": at_target["plan_at_60pct"]["median_ms"],
                   "met": at_target["plan_at_60pct"]["median_ms"] < TARGET_MS},
    }
    if args.out:
        write_records(args.out, [record])
    else:
        sys.stdout.write(json.dumps({"records": [record]}, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
