"""The ``memscale`` command line. Each subcommand lives in its own module of this package
and registers itself through ``SUBCOMMANDS``."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from .. import __version__

# name -> (module, help). Modules define add_arguments(parser) and run(args) -> int.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("memscale.cli.demo", "profile, plan and train a built-in model inside a budget"),
    "bench": ("memscale.cli.bench", "run benchmark scenarios and check their goals"),
    "report": ("memscale.cli.report", "write an HTML report (and PNGs) of benchmark results"),
    "profile": ("memscale.cli.profile", "profile a model (module:factory) and print its ModelGraph"),
    "fit": ("memscale.cli.fit", "the largest batch or sequence length whose step fits a memory budget"),
    "plan": ("memscale.cli.plan", "plan a recorded ModelGraph for a memory budget and print the plan"),
    "docs": ("memscale.cli.docs", "generate a page of docs/ from its source (config: from the Config schema)"),
}


def _load(module_name: str) -> tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]:
    import importlib

    module = importlib.import_module(module_name)
    return module.add_arguments, module.run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memscale", description="Make a PyTorch model fit the memory it is given.")
    parser.add_argument("--version", action="version", version=f"memscale {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        add_arguments, run = _load(module_name)
        sp = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(sp)
        sp.set_defaults(_run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(name)s %(levelname)s: %(message)s")
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from ..errors import MemScaleError

    try:
        return int(args._run(args) or 0)
    except MemScaleError as error:
        sys.stderr.write(f"memscale {args.command}: {error}\n")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
