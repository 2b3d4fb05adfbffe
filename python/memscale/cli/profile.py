"""``memscale profile``: profile a model given as ``module:factory`` and print its ModelGraph.

Example::

    memscale profile --model memscale.testing.models.gpt:build --arg n_layers=2 \\
        --input-shape 2,64 --input-dtype int64 --json

Inputs are zeros of the given shapes and dtypes on the meta device (values do not affect
the estimate, and nothing is allocated); pass one ``--input-shape`` per positional input.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

_DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "bool")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="MODULE:FACTORY",
                        help="importable factory returning an nn.Module, e.g. memscale.testing.models.gpt:build")
    parser.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                        help="keyword argument for the factory (VALUE parsed as JSON, else a string); repeatable")
    parser.add_argument("--input-shape", action="append", required=True, metavar="D0,D1,...",
                        help="shape of one positional input; repeat for each input")
    parser.add_argument("--input-dtype", action="append", default=[], choices=_DTYPES,
                        help="dtype of each input in order (default float32)")
    parser.add_argument("--meta", action="store_true",
                        help="build the model under torch.device('meta') (no weights are allocated)")
    parser.add_argument("--inference", action="store_true", help="profile a forward-only inference step")
    parser.add_argument("--optimizer", default="adamw", choices=("none", "sgd", "sgd_momentum", "adam", "adamw"))
    parser.add_argument("--mixed-precision", action="store_true", help="fp32 master weights beside the parameters")
    parser.add_argument("--measure", action="store_true", help="also run one real step and record measured peaks")
    parser.add_argument("--json", action="store_true", help="print the ModelGraph JSON instead of a table")
    parser.add_argument("--out", default=None, help="also write the ModelGraph JSON to this file")


def load_factory(spec: str) -> Any:
    """The callable named by ``module:attr`` (``attr`` may be dotted)."""
    from ..errors import ConfigError

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--model: expected MODULE:FACTORY (e.g. memscale.testing.models.gpt:build), got {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"--model: cannot import module {module_name!r} ({error})") from error
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"--model: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"--model: {spec!r} is not callable")
    return obj


def parse_kwargs(items: list[str]) -> dict[str, Any]:
    from ..errors import ConfigError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--arg: expected KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def parse_shape(text: str) -> tuple[int, ...]:
    from ..errors import ConfigError

    try:
        shape = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        shape = ()
    if not shape or any(d < 0 for d in shape):
        raise ConfigError(f"--input-shape: expected comma-separated non-negative ints like 2,64, got {text!r}")
    return shape


def make_inputs(shapes: list[str], dtypes: list[str]) -> tuple[Any, ...]:
    import torch

    from ..errors import ConfigError

    if len(dtypes) > len(shapes):
        raise ConfigError(f"--input-dtype given {len(dtypes)} times for {len(shapes)} --input-shape")
    dtypes = dtypes + ["float32"] * (len(shapes) - len(dtypes))
    return tuple(torch.zeros(parse_shape(s), dtype=getattr(torch, d), device="meta") for s, d in zip(shapes, dtypes))


def _table(graph: dict[str, Any]) -> str:
    def mib(n: int) -> str:
        return f"{n / 2**20:.1f}"

    rows = [f"{graph['model_name']}  dtype={graph['dtype']} batch={graph['batch']} seq={graph['seq']} "
            f"training={graph['training']} optimizer={graph['optimizer']}",
            f"{'#':>3} {'layer':<28} {'kind':<10} {'params MiB':>10} {'saved MiB':>10} {'transient MiB':>13} "
            f"{'GFLOP':>8} tileable"]
    for layer in graph["layers"]:
        rows.append(f"{layer['index']:>3} {layer['name'][:28]:<28} {layer['kind']:<10} {mib(layer['param_bytes']):>10} "
                    f"{mib(layer['activation_bytes']):>10} {mib(layer['transient_bytes']):>13} "
                    f"{layer['flops'] / 1e9:>8.2f} {','.join(layer['tileable']) or '-'}")
    return "\n".join(rows) + "\n"


def run(args: argparse.Namespace) -> int:
    import torch
    from torch import nn

    from ..errors import ConfigError
    from ..profiler.profile import profile_dict

    factory = load_factory(args.model)
    kwargs = parse_kwargs(args.arg)
    inputs = make_inputs(args.input_shape, args.input_dtype)
    try:
        if args.meta:
            with torch.device("meta"):
                model = factory(**kwargs)
        else:
            model = factory(**kwargs)
    except TypeError as error:
        raise ConfigError(f"--model {args.model}: factory rejected {kwargs} ({error})") from error
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {args.model}: factory returned {type(model).__name__}, not an nn.Module")
    graph = profile_dict(model, inputs, training=not args.inference, optimizer=args.optimizer,
                         measure=args.measure, mixed_precision=args.mixed_precision)
    text = json.dumps(graph, indent=2, sort_keys=True) + "\n"
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    sys.stdout.write(text if args.json else _table(graph))
    return 0
