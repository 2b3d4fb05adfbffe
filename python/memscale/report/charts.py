"""The chart kinds of a report, each returned as a matplotlib Figure. Legends sit outside
the plot area (right of it), so they never cover a bar or a curve."""
from __future__ import annotations

from typing import Any

TERMS = ("weights", "grads", "optimizer", "activations", "kv_cache")
COLORS = {"weights": "#4c72b0", "grads": "#dd8452", "optimizer": "#55a868", "activations": "#c44e52",
          "kv_cache": "#937860"}
MIB = 2.0**20
#: Timeline colours, distinct from each other and from the bar colours (the report's
#: screenshot test finds the budget line and the measured curve by them).
TIMELINE_COLORS = {"before": "#9a9a9a", "after": "#1f5fbf", "measured": "#ff8c00", "budget": "#e0101a"}
PHASE_SHADES = {"forward": "#eef4fb", "backward": "#fbf1e8", "optimizer_step": "#eef7ee"}
#: A timeline figure 13 inches wide at 100 dpi: 1,300 px, inside a 1,400 px window.
TIMELINE_WIDTH_IN = 13.0


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")  # no display: render to files only
    import matplotlib.pyplot as plt

    return plt.figure(figsize=(width, height), dpi=100)


def _legend_outside(ax, fontsize: float) -> None:
    """The legend right of the axes; tight_layout makes room for it."""
    ax.legend(fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)


def _phase_spans(phases: list[str]) -> list[tuple[str, int, int]]:
    spans: list[tuple[str, int, int]] = []
    for i, phase in enumerate(phases):
        if spans and spans[-1][0] == phase:
            spans[-1] = (phase, spans[-1][1], i)
        else:
            spans.append((phase, i, i))
    return spans


def timeline(record: dict[str, Any], title: str):
    """Memory at each position of the step: predicted before and after the plan, measured
    where a measurement exists, the budget as a horizontal line; the step's phases shaded."""
    labels, n = record["labels"], len(record["labels"])
    fig = _figure(TIMELINE_WIDTH_IN, 5.2)
    ax = fig.add_subplot(1, 1, 1)
    xs = list(range(n))
    for phase, first, last in _phase_spans(record["phases"]):
        ax.axvspan(first - 0.5, last + 0.5, color=PHASE_SHADES.get(phase, "#f4f4f4"), zorder=0)
        ax.text((first + last) / 2, 1.01, phase.replace("_", " "), transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=8, color="#555555")
    ax.plot(xs, [b / MIB for b in record["before"]], color=TIMELINE_COLORS["before"], linestyle="--", linewidth=1.6,
            marker="o", markersize=3, label="predicted, no plan", zorder=2)
    ax.plot(xs, [b / MIB for b in record["after"]], color=TIMELINE_COLORS["after"], linewidth=2.2, marker="o",
            markersize=3.5, label="predicted, with the plan", zorder=3)
    measured = record.get("measured")
    if measured and any(m is not None for m in measured):
        points = [(x, m / MIB) for x, m in zip(xs, measured) if m is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], color=TIMELINE_COLORS["measured"], linewidth=2.6,
                marker="s", markersize=4, label=f"measured ({record.get('meter', 'meter')})", zorder=4)
    ax.axhline(record["budget_bytes"] / MIB, color=TIMELINE_COLORS["budget"], linewidth=2.4, label="budget", zorder=5)
    step = max(1, (n + 59) // 60)  # at most 60 readable tick labels
    ax.set_xticks(xs[::step])
    ax.set_xticklabels(labels[::step], rotation=70, ha="right", fontsize=6)
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("MiB")
    ax.set_title(title, pad=16)
    _legend_outside(ax, fontsize=8)
    fig.tight_layout()
    return fig


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
    _legend_outside(ax, fontsize=6)
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
    _legend_outside(ax, fontsize=7)
    fig.tight_layout()
    return fig
