"""``memscale fit``: the largest batch (or sequence length) whose step fits a budget.

Examples::

    memscale fit --model gpt --budget 64MiB --vary batch
    memscale fit --model llama --arg preset='"1b"' --meta --seq 2048 --budget 24GiB --vary batch
    memscale fit --model hf:llama --budget 256MiB --vary seq
    memscale fit --model memscale.testing.models.resnet:build --input-shape 2,3,32,32 --budget 1GiB

``--model`` is a reference model name (memscale.testing.models: gpt, llama, resnet, ...,
with their example inputs at ``--batch`` x ``--seq``), ``hf:NAME`` (a Hugging Face model
built from a config, memscale.testing.hf_models) or a user's ``module:factory`` with one
``--input-shape`` per positional input (zeros on the meta device, as ``memscale profile``).
Prints the answer, the plan at it and the smallest budget of the given inputs; with
``--contexts 128,256,512`` the largest batch at each context instead (the batch x context
frontier, with ``--inference`` for serving).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .profile import _DTYPES, load_factory, make_inputs, parse_kwargs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="NAME|hf:NAME|MODULE:FACTORY",
                        help="reference model (gpt, llama, resnet, ...), hf:NAME (gpt2, llama, ...) or module:factory")
    parser.add_argument("--budget", required=True, help='memory budget: bytes, a size ("2GiB") or a fraction (0.8)')
    parser.add_argument("--vary", default="batch", choices=("batch", "seq", "none"),
                        help="dimension to maximise (none: the plan and smallest budget of the given inputs)")
    parser.add_argument("--batch", type=int, default=2, help="batch of the example inputs (reference/hf models)")
    parser.add_argument("--seq", type=int, default=None, help="sequence length of the example inputs (token models)")
    parser.add_argument("--max-size", type=int, default=None, help="largest size searched")
    parser.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                        help="keyword argument for the model factory (VALUE parsed as JSON); repeatable")
    parser.add_argument("--input-shape", action="append", default=[], metavar="D0,D1,...",
                        help="module:factory models: shape of one positional input; repeat for each")
    parser.add_argument("--input-dtype", action="append", default=[], choices=_DTYPES,
                        help="dtype of each --input-shape in order (default float32)")
    parser.add_argument("--meta", action="store_true", help="build the model on the meta device (nothing allocated)")
    parser.add_argument("--inference", action="store_true",
                        help="an inference step (weights, KV cache, reservation): the largest batch or context")
    parser.add_argument("--contexts", default=None, metavar="S1,S2,...",
                        help="the batch x context frontier: the largest batch at each of these sequence lengths")
    parser.add_argument("--optimizer", default="adamw", choices=("none", "sgd", "sgd_momentum", "adam", "adamw"))
    parser.add_argument("--hardware", help="Hardware JSON file to plan for (default: detect this machine)")
    parser.add_argument("--json", action="store_true", help="print the answer as JSON (with the plan JSON)")


def _build(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(model, example inputs, loss_fn) for the --model given."""
    import torch

    from ..errors import ConfigError
    from ..testing import hf_models, models

    kwargs = parse_kwargs(args.arg)
    device = torch.device("meta") if args.meta else torch.device("cpu")
    name = args.model
    if name.startswith("hf:"):
        if not hf_models.available():
            raise ConfigError("--model hf:...: transformers is not installed")
        sizes = {"batch": args.batch, **({"seq": args.seq} if args.seq else {})}
        with device:
            case = hf_models.build(name[3:], **sizes, **kwargs)
        return case.model, case.inputs, case.loss_fn
    if ":" in name:
        if not args.input_shape:
            raise ConfigError("--model MODULE:FACTORY needs one --input-shape per positional input")
        factory = load_factory(name)
        with device:
            model = factory(**kwargs)
        return model, make_inputs(args.input_shape, args.input_dtype), None
    if name not in models.MODELS:
        raise ConfigError(f"--model: expected one of {sorted(models.MODELS)}, hf:NAME or MODULE:FACTORY, got {name!r}")
    with device:
        model = models.build(name, **kwargs)
    sizes = {"batch": args.batch, **({"seq": args.seq} if args.seq else {})}
    return model, models.example_inputs(name, model, labels=True, device=device, **sizes), None


def run(args: argparse.Namespace) -> int:
    import memscale

    model, inputs, loss_fn = _build(args)
    hardware = memscale.Hardware.from_json(args.hardware) if args.hardware else None
    training = not args.inference
    if args.contexts:
        return _frontier(args, model, inputs, loss_fn, hardware, training)
    result = memscale.fit(model, inputs, args.budget, vary=None if args.vary == "none" else args.vary,
                          training=training, optimizer=args.optimizer if training else "none",
                          loss_fn=(lambda out, batch: loss_fn(out)) if loss_fn else None,
                          max_size=args.max_size, hardware=hardware)
    if args.json:
        doc = {"vary": result.vary, "size": result.size, "given_size": result.given_size,
               "budget_bytes": result.budget_bytes, "min_budget_bytes": result.min_budget_bytes,
               "next_min_budget_bytes": result.next_min_budget_bytes, "capped": result.capped,
               "profiled_sizes": result.profiled_sizes, "quadratic": result.quadratic, "training": result.training,
               "plan": json.loads(result.plan.to_json()) if result.plan is not None else None}
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(result.summary() + "\n")
    return 0


def _frontier(args: argparse.Namespace, model: Any, inputs: Any, loss_fn: Any, hardware: Any, training: bool) -> int:
    import memscale

    from ..errors import ConfigError

    try:
        contexts = [int(c) for c in args.contexts.split(",") if c.strip()]
    except ValueError:
        raise ConfigError(f"--contexts: expected comma-separated ints like 128,256,512, got {args.contexts!r}") from None
    results = memscale.fit_frontier(model, inputs, args.budget, contexts, training=training,
                                    optimizer=args.optimizer if training else "none",
                                    loss_fn=(lambda out, batch: loss_fn(out)) if loss_fn else None,
                                    max_size=args.max_size, hardware=hardware)
    rows = [{"context": r.graph.seq, "batch": r.size, "predicted_peak_bytes": r.plan.predicted_peak_bytes,
             "next_min_budget_bytes": r.next_min_budget_bytes} for r in results]
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=2, sort_keys=True) + "\n")
        return 0
    fmt = memscale.format_bytes
    sys.stdout.write(f"{'context':>8} {'largest batch':>14} {'predicted peak':>15}\n")
    for row in rows:
        sys.stdout.write(f"{row['context']:>8} {row['batch']:>14} {fmt(row['predicted_peak_bytes']):>15}\n")
    if len(rows) < len(contexts):
        sys.stdout.write(f"context {contexts[len(rows)]} does not fit even at batch 1\n")
    return 0
