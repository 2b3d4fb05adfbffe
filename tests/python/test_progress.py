"""memscale.progress: a bar on a terminal, nothing otherwise; the profiler's layer walk and
the fit search draw through it."""
from __future__ import annotations

import io
import logging
import sys

import pytest

from memscale.progress import enabled, progress, progress_iter
from memscale.profiler.profile import profile
from memscale.testing import models


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def info_logging() -> None:
    """The memscale logger's level unset (the default): bars follow the terminal."""
    log = logging.getLogger("memscale")
    level = log.level
    log.setLevel(logging.NOTSET)
    yield
    log.setLevel(level)


def test_quiet_when_stderr_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch, info_logging: None) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert not enabled()
    assert list(progress_iter(range(3), desc="quiet-bar")) == [0, 1, 2]
    assert err.getvalue() == ""


def test_draws_on_a_terminal_and_obeys_logging(monkeypatch: pytest.MonkeyPatch, info_logging: None) -> None:
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    assert enabled()
    with progress(total=2, desc="tty-bar", unit="step") as bar:
        bar.update(2)
    assert "tty-bar" in err.getvalue()
    logging.getLogger("memscale").setLevel(logging.WARNING)
    err.seek(0), err.truncate()
    assert not enabled()
    assert list(progress_iter([1, 2], desc="silenced")) == [1, 2] and err.getvalue() == ""


def test_profiler_layer_walk_shows_progress(monkeypatch: pytest.MonkeyPatch, info_logging: None) -> None:
    model = models.build("gpt", n_layers=2, d_model=32, d_ff=64, vocab=64, max_seq=32)
    inputs = models.example_inputs("gpt", model, batch=2, seq=16)
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    graph = profile(model, inputs)
    assert "memscale profile" in err.getvalue()
    # 2 ticks per layer of a training step: the bar ends at the layer count x 2 (or fewer for
    # layers without a gradient), never above
    assert f"/{2 * len(graph.layers)}" in err.getvalue()
