"""Offloaded generation of a GPT-style model whose weights are 2.5x the memory budget.

Same process, same model, same prompts, greedy decoding with a KV cache:

* reference: the model fully resident (outputs every other run must equal);
* memscale: ``wrap_for_inference`` with only the budget given: the decision engine plans
  the inference step (resident-weight limit, KV-cache and activation tiers by its tier-policy
  search, reservation safety factor calibrated on measured probes) and the C++ pager
  runs it, prefetching on its thread from safetensors files;
* Accelerate: ``accelerate.disk_offload`` of the same model (per-module hooks reading
  numpy memmaps), driven by the same generation loop.

I/O conditions are the same for both offloaders: ``page_cache="drop"`` (the default)
evicts the offload files from the OS page cache before every step of both, so weights
really come from disk, as the budget says they must; ``"keep"`` lets the page cache
serve both (RAM outside the budget). Memory is measured with ``memscale.track_memory``
(the counting CPU allocator).
"""
from __future__ import annotations

import gc
import os
import statistics
import tempfile
import time
from typing import Any, Callable

import torch

from memscale.config import Config

from memscale.memory import track_memory
from memscale.testing.models import gpt
from memscale.runtime.inference import generate, handle_of, unwrap_inference, wrap_for_inference
from memscale.runtime.inference.memory_model import fit_reservation

WEIGHTS_OVER_BUDGET = 2.5


def _drop_cache(directory: str) -> None:
    for root, _, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _interleaved(runs: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Times each run ``repeats`` times, rotating the order every round, so load from
    other processes on a shared machine falls on all of them alike."""
    names = list(runs)
    outs: dict[str, Any] = {}
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            gc.collect()
            start = time.perf_counter()
            outs[name] = runs[name]()
            times[name].append(time.perf_counter() - start)
    return outs, times


def _setup(quick: bool) -> dict[str, Any]:
    """Model and batch. Tokens per step must be large enough that computing a block takes
    about as long as reading the next one (hiding needs compute >= I/O), while the KV
    cache of the batch fits next to a two-block window inside budget = weights / 2.5."""
    if quick:
        return dict(cfg=dict(d_model=512, n_heads=8, n_layers=8, d_ff=2048, vocab=2048, max_seq=32),
                    batch=24, prompt=8, new=8, repeats=3)
    return dict(cfg=dict(d_model=1024, n_heads=16, n_layers=16, d_ff=4096, vocab=4096, max_seq=64),
                batch=32, prompt=16, new=12, repeats=5)


def _engine_config(budget: int, batch: int, prompt: int, disk_dir: str) -> Config:
    """Only the budget and where files go: the decision engine
    chooses the resident-weight limit and the KV-cache / activation tiers (the tier-policy
    search) from the profiled inference graph. ``prefill_tokens`` is the batch's prefill,
    not the serving default of 8192 tokens."""
    return Config(memory_budget=budget, reservation={"prefill_tokens": batch * prompt},
                           offload={"disk_dir": disk_dir})


def run(quick: bool, page_cache: str = "drop", threads: int | None = None) -> list[dict[str, Any]]:
    import accelerate
    from accelerate import disk_offload

    # One core is left to I/O (the pager's prefetch thread; Accelerate reads on the
    # compute thread): every run uses the same torch thread count, recorded below.
    threads = threads or max(1, (os.cpu_count() or 2) - 1)
    torch.set_num_threads(threads)
    s = _setup(quick)
    build = lambda: gpt.build(seed=0, **s["cfg"]).eval()  # noqa: E731 - three identical copies
    resident = build()
    ids = gpt.example_inputs(resident, batch=s["batch"], seq=s["prompt"], labels=False)[0]
    weights = sum(p.untyped_storage().nbytes() for p in resident.parameters())
    budget = int(weights / WEIGHTS_OVER_BUDGET)
    generate(resident, ids, 2)  # warm-up: thread pools, allocator
    ref = generate(resident, ids, s["new"], return_logits=True)
    # The engine's reservation safety factor, fitted to measured probes of this model.
    calibration = fit_reservation(resident, probes=((1, 8), (s["batch"] // 2, s["prompt"]), (s["batch"], s["prompt"])))
    full_ids = torch.cat([ids, ref.tokens[:, s["prompt"]:]], dim=1)[:, :s["prompt"] + s["new"]]
    tmp = tempfile.TemporaryDirectory(prefix="memscale-bench-")
    ours_dir, acc_dir = os.path.join(tmp.name, "memscale"), os.path.join(tmp.name, "accelerate")
    os.mkdir(ours_dir)
    try:
        # memscale alone in a counting session: the model is built inside it, so every byte
        # it holds after wrap (hot set, resident blocks, KV, activations) is counted.
        with track_memory("cpu") as tracker:
            ours_model = build()
            cfg = _engine_config(budget, s["batch"], s["prompt"], ours_dir)
            # Example inputs of the generation's full length: the plan sizes the KV cache on them.
            wrap_for_inference(ours_model, cfg, (full_ids,), calibration=calibration,
                               drop_page_cache=page_cache == "drop")
            handle = handle_of(ours_model)
            generate(ours_model, ids, 2)  # warm-up
            handle.pager.wait_idle()
            gc.collect()
            tracker.reset_peak()
            ours = generate(ours_model, ids, s["new"], return_logits=True)
            peak_ours = tracker.peak_bytes
        # Accelerate alone in its own session, for its figures.
        with track_memory("cpu") as tracker:
            acc_model = build()
            disk_offload(acc_model, acc_dir, execution_device=torch.device("cpu"))
            if page_cache == "drop":
                acc_model.wte.register_forward_pre_hook(lambda *_: _drop_cache(acc_dir))
            generate(acc_model, ids, 2)  # warm-up
            gc.collect()
            tracker.reset_peak()
            acc = generate(acc_model, ids, s["new"], return_logits=True)
            peak_acc = tracker.peak_bytes
        equal = torch.equal(ours.tokens, ref.tokens) and all(torch.equal(a, b) for a, b in zip(ours.logits, ref.logits))
        acc_equal = torch.equal(acc.tokens, ref.tokens)
        # Throughput: the three interleaved.
        handle.reset_stats()
        outs, times = _interleaved({
            "memscale": lambda: generate(ours_model, ids, s["new"]),
            "accelerate": lambda: generate(acc_model, ids, s["new"]),
            "resident": lambda: generate(resident, ids, s["new"]),
        }, s["repeats"])
        equal = equal and torch.equal(outs["memscale"].tokens, ref.tokens)
        stats = handle.stats()
        files = len(handle.files())
        plan, tiers = handle.plan, handle.tiers.to_dict()
        unwrap_inference(ours_model)
        files_left = os.listdir(ours_dir)
    finally:
        tmp.cleanup()

    tokens = s["batch"] * s["new"]
    tps = {name: tokens / statistics.median(t) for name, t in times.items()}
    return [{
        "scenario": "offload_inference",
        "model": "gpt d{d_model} L{n_layers} ff{d_ff} vocab{vocab}".format(**s["cfg"]),
        "label": f"batch {s['batch']} prompt {s['prompt']} new {s['new']} page_cache {page_cache}",
        "page_cache": page_cache,
        "torch_threads": threads,
        "weight_bytes": weights,
        "budget_bytes": budget,
        "weights_over_budget": weights / budget,
        "engine": {"offload": {"policy": plan.offload.policy, "ram_bytes": plan.offload.ram_bytes,
                               "prefetch_n_ahead": plan.offload.prefetch_n_ahead},
                   "tiers": tiers, "predicted_peak_bytes": plan.predicted_peak_bytes,
                   "reservation_safety_factor": calibration.safety_factor},
        "measured_peak_bytes": peak_ours,
        "tokens_per_s": tps["memscale"],
        "times_s": times["memscale"],
        "outputs_equal_unwrapped": equal,
        "files_written": files,
        "files_left_after_unwrap": len(files_left),
        "pager": stats,
        "disk_read_seconds": stats["load_seconds"],
        "waited_for_reads_seconds": stats["acquire_wait_seconds"],
        "baseline": {
            "resident": {"tokens_per_s": tps["resident"], "times_s": times["resident"]},
            "accelerate_disk_offload": {"tokens_per_s": tps["accelerate"], "times_s": times["accelerate"],
                                        "measured_peak_bytes": peak_acc,
                                        "outputs_equal_unwrapped": acc_equal, "version": accelerate.__version__},
        },
        "ratios": {
            "throughput_vs_accelerate": tps["memscale"] / tps["accelerate"],
            "peak_over_budget": peak_ours / budget,
            "prefetch_hidden_fraction": stats["hidden_fraction"],
            "throughput_vs_resident": tps["memscale"] / tps["resident"],
        },
        "measurement": "track_memory('cpu') peak of the wrapped model's own session (all its tensors: "
                       "weights, KV, activations); pager load time = disk reads, waited = acquire() blocked; "
                       "median wall time of generate(), the three runs interleaved",
    }]


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import logging

    from memscale.bench.records import finish_records, write_records

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--page-cache", choices=("drop", "keep"), default="drop")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: cores - 1)")
    parser.add_argument("--device", default="auto", help="accepted for the suite's runner; this scenario runs on the CPU")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s: %(message)s")
    records = run(args.quick, args.page_cache, args.threads)
    finish_records(records, quick=args.quick, device="cpu")
    if args.out:
        write_records(args.out, records)
    else:
        print(json.dumps({"records": records}, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
