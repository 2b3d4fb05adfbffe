"""``memscale demo``: profile, plan and train a built-in GPT-style model inside half of its
unoptimized peak memory, then print the plan, the measured peak against the budget and
the loss falling."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budget-fraction", type=float, default=0.5,
                        help="budget as a share of the measured unoptimized peak (default 0.5)")
    parser.add_argument("--steps", type=int, default=12, help="training steps (default 12)")


def run(args: argparse.Namespace) -> int:
    from .. import detect_hardware, format_bytes
    from .demo_run import run_demo

    hw = detect_hardware()
    print(f"hardware: {hw.gpu_count} GPU(s), host RAM {format_bytes(hw.host_available_bytes)} available")
    print(f"training a GPT-style model for {args.steps} steps inside {args.budget_fraction:.0%} of its unoptimized peak ...")
    result = run_demo(args.budget_fraction, args.steps,
                      on_step=lambda step, loss: print(f"  step {step + 1:3d}  loss {loss:.4f}", flush=True))
    print(result.plan_summary)
    ratio = result.measured_peak_bytes / result.budget_bytes
    print(f"unoptimized peak {format_bytes(result.unoptimized_peak_bytes)} (measured)")
    print(f"budget           {format_bytes(result.budget_bytes)}")
    print(f"predicted peak   {format_bytes(result.predicted_peak_bytes)}")
    print(f"measured peak    {format_bytes(result.measured_peak_bytes)}  = {ratio:.1%} of the budget "
          f"({'within' if ratio <= 1.0 else 'OVER'} budget)")
    print(f"loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f} in {result.seconds:.1f} s")
    return 0 if ratio <= 1.05 and result.losses[-1] < result.losses[0] else 1
