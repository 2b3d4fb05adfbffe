"""The two chart kinds of a report, each returned as a matplotlib Figure."""
from __future__ import annotations

from typing import Any

TERMS = ("weights", "grads", "optimizer", "activations", "kv_cache")
COLORS = {"weights": "#4c72b0", "grads": "#dd8452", "optimizer": "#55a868", "activations": "#c44e52",
          "kv_cache": "#937860"}
MIB = 2.0**20


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")  # no display: render to files only
    import matplotlib.pyplot as plt

    return plt.figure(figsize=(width, height), dpi=100)


def layer_bars(layers: list[dict[str, Any]], title: str):
    """Stacked bars per layer: left bar before the plan, right bar after it."""
    fig = _figure(max(6.0, 0.5 * len(layers) + 2), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.4
    for side, offset in (("before", -width / 2), ("after", width / 2)):
        bottom = [0.0] * len(layers)
        for term in TERMS:
            values = [layer[side][term] / MIB for layer in layers]
            ax.bar([i + offset for i in range(len(layers))], values, width, bottom=bottom, color=COLORS[term],
                   alpha=1.0 if side == "after" else 0.45, edgecolor="white", linewidth=0.3,
                   label=f"{term} ({side})" if term else None)
            bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels([layer["name"] or "(root)" for layer in layers], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("MiB")
    ax.set_title(title)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def peaks(rows: list[dict[str, Any]], title: str):
    """Measured vs predicted peak per record, with the budget as a marker."""
    fig = _figure(max(5.0, 0.9 * len(rows) + 2), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["predicted"] / MIB for r in rows], 0.4, label="predicted peak", color="#8172b3")
    ax.bar([x + 0.2 for x in xs], [r["measured"] / MIB for r in rows], 0.4, label="measured peak", color="#4c72b0")
    budgets = [(x, r["budget"] / MIB) for x, r in zip(xs, rows) if r.get("budget")]
    if budgets:
        ax.scatter([b[0] for b in budgets], [b[1] for b in budgets], marker="_", s=900, color="black", label="budget")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([r["label"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("MiB")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
