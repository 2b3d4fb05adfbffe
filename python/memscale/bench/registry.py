"""The scenarios ``memscale bench`` knows, in the order they run. Every one is a module
of the installed package (``memscale.bench.scenarios``): none needs a checkout."""
from __future__ import annotations

# name -> (module run as ``python -m MODULE --out FILE [--quick]``, one-line description)
SCENARIOS: dict[str, tuple[str, str]] = {
    "planning_speed": ("memscale.bench.scenarios.planning_speed", "planning time for 10 to 10,000 layers"),
    "estimate_accuracy": ("memscale.bench.scenarios.estimate_accuracy", "predicted vs measured unoptimized training peak, 6 models x 2 batches"),
    "fit_1b": ("memscale.bench.scenarios.fit_1b", "time and extra RAM of memscale.fit on a 1.1B Llama defined on meta"),
    "profile_1b": ("memscale.bench.scenarios.profile_1b", "time and extra RAM of profiling a 1.1B Llama defined on meta"),
    "tiling_lce": ("memscale.bench.scenarios.tiling_lce", "chunked LM head + cross-entropy vs untiled, 32k vocabulary"),
    "training_sweep": ("memscale.bench.scenarios.training_sweep",
                       "GPT training at 80/60/45/35% of its peak vs unoptimized and checkpoint-every-block"),
    "plan_quality": ("memscale.bench.scenarios.plan_quality",
                     "GPT training at 90/70/50% of its peak and the min budget: memscale auto/greedy/optimal vs "
                     "torch.compile activation_memory_budget, sac_ilp and checkpoint-every-block"),
    "offload_inference": ("memscale.bench.scenarios.offload_inference",
                          "HF Llama / GPT-2 / Qwen2 generate at 0.4x and 0.25x of their weights: pager vs "
                          "Accelerate disk_offload and device_map=auto, page cache dropped and kept"),
    "auto_policy": ("memscale.bench.scenarios.auto_policy",
                    "the learned policy stage held out by model family vs the rules alone, on the measured dataset"),
    "optimizer_offload": ("memscale.bench.scenarios.optimizer_offload",
                          "GPT AdamW training with memscale.optim.offloaded (state, state + gradients, with "
                          "checkpoint-every-block) vs the resident optimizer: peaks below the static floor, equality, "
                          "time, hidden tier I/O"),
    "distributed": ("memscale.bench.scenarios.distributed",
                    "GPT training under FSDP2 and DDP in 2 gloo processes at 60/40% of the per-rank peak vs "
                    "checkpoint-every-block: per-rank peak, step time"),
    "scheduler": ("memscale.bench.scenarios.scheduler",
                  "memory-aware scheduler vs fixed worst-case batch on a request stream, two models"),
    "continuous_batching": ("memscale.bench.scenarios.continuous_batching",
                            "continuous batching of HF Llama + GPT-2 vs same-length batching and a fixed "
                            "worst-case batch, one budget"),
}


def resolve(names: list[str] | None) -> list[str]:
    """Scenario names to run: all when none are named; unknown names are an error."""
    from ..errors import ConfigError

    if not names:
        return list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ConfigError(f"--scenario: unknown {', '.join(unknown)}; allowed: {', '.join(SCENARIOS)}")
    return names
