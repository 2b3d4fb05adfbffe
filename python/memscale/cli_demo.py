"""``memscale demo``: the main job on a built-in default."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budget-fraction", type=float, default=0.5,
                        help="budget as a fraction of the model's unoptimized peak (default 0.5)")


def run(args: argparse.Namespace) -> int:
    import logging

    from .config import Config

    log = logging.getLogger("memscale")
    log.info("default configuration:\n%s", Config().to_json())
    return 0
