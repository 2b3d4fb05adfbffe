"""``memscale docs``: write the generated pages of docs/ (today: the Config reference).

Example::

    python -m memscale docs config            # rewrites docs/config.md of this checkout
    python -m memscale docs config --check    # exit 1 when docs/config.md is out of date
    python -m memscale docs config --output -  # print it
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# page -> (file under docs/, module:function rendering its text)
PAGES = {"config": ("config.md", "memscale.report.config_doc:render_config_doc")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("page", choices=sorted(PAGES), help="the page to generate")
    parser.add_argument("--output", help="file to write, '-' for stdout (default: docs/<page>.md of the checkout)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when the file differs")


def checkout_docs() -> Path:
    """docs/ of the MemScale checkout holding the current directory."""
    from ..errors import MemScaleError

    for folder in [Path.cwd(), *Path.cwd().parents]:
        if (folder / "include" / "memscale" / "core" / "config_schema.hpp").is_file() and (folder / "docs").is_dir():
            return folder / "docs"
    raise MemScaleError(f"no MemScale checkout (include/memscale and docs/) in {Path.cwd()} or its parents; "
                        "run inside one or pass --output")


def run(args: argparse.Namespace) -> int:
    import importlib

    file_name, renderer = PAGES[args.page]
    module_name, function = renderer.split(":")
    text = getattr(importlib.import_module(module_name), function)()
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    path = Path(args.output) if args.output else checkout_docs() / file_name
    current = path.read_text(encoding="utf-8") if path.is_file() else None
    if args.check:
        if current == text:
            print(f"{path} is up to date")
            return 0
        print(f"{path} is out of date; regenerate it: python -m memscale docs {args.page}", file=sys.stderr)
        return 1
    if current != text:
        path.write_text(text, encoding="utf-8")
    print(f"{path}: {'unchanged' if current == text else 'written'}")
    return 0
