"""One progress bar helper for long work (fit searches, profiling big models, benchmarks).

A tqdm bar on stderr when stderr is a terminal, unless the ``memscale`` logger was set above
INFO (``logging.getLogger("memscale").setLevel(logging.WARNING)``: quiet); otherwise nothing
is drawn (logs, CI and pipes stay clean). tqdm is optional: without it the helper is silent.

Example:
    >>> from memscale.progress import progress
    >>> with progress(total=3, desc="demo", unit="step") as bar:
    ...     for _ in range(3):
    ...         bar.update(1)
    >>> [x for x in progress_iter(range(2), desc="demo")]
    [0, 1]
"""
from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, TypeVar

T = TypeVar("T")

_log = logging.getLogger("memscale")


def enabled() -> bool:
    """Whether bars are drawn: stderr is a terminal and the memscale logger's own level (not
    the root's default WARNING) is INFO or below, or unset."""
    isatty = getattr(sys.stderr, "isatty", None)
    if not (callable(isatty) and isatty()) or _log.level > logging.INFO:
        return False
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


class _Quiet:
    """The bar's interface doing nothing (not a terminal, or logging says quiet)."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def set_description_str(self, text: str) -> None:
        pass


@contextmanager
def progress(total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[Any]:
    """A bar with ``update(n)``, ``set_postfix_str(text)`` and ``set_description_str(text)``."""
    if not enabled():
        yield _Quiet()
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


def progress_iter(items: Iterable[T], desc: str = "", unit: str = "it", total: int | None = None,
                  postfix: Any = None) -> Iterator[T]:
    """Iterate ``items`` with a bar; ``postfix(item)`` names each item on the bar."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress(total=total, desc=desc, unit=unit) as bar:
        for item in items:
            if postfix is not None:
                bar.set_postfix_str(str(postfix(item)))
            yield item
            bar.update(1)
