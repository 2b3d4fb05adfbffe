"""Writes a self-contained HTML page (charts inline as SVG) plus one PNG per chart."""
from __future__ import annotations

import html
import io
import json
import logging
from pathlib import Path
from typing import Any

from . import charts

log = logging.getLogger("memscale")

STYLE = """body{font-family:sans-serif;margin:2em;max-width:1320px}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;vertical-align:top}th{background:#f3f3f3}
td.l,th.l{text-align:left}td.why{max-width:560px;font-size:12px}td.why b{font-weight:600}
figure{margin:1em 0}figure svg{max-width:100%;height:auto}figcaption{font-size:12px;color:#555}"""


def _mib(value: Any) -> str:
    return "" if value in (None, "") else f"{value / 2**20:.1f} MiB"


def _emit_chart(fig, out_dir: Path, stem: str, caption: str) -> str:
    """Saves the PNG and returns the figure as inline SVG markup."""
    import matplotlib.pyplot as plt

    fig.savefig(out_dir / f"{stem}.png")
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]
    return (f'<figure class="chart" data-chart="{html.escape(stem)}">{svg}'
            f'<figcaption>{html.escape(caption)} (<a href="{html.escape(stem)}.png">PNG</a>)</figcaption></figure>')


def _layer_rows(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": l["name"], "before": l["before"], "after": l["after"]} for l in plan["layers"]]


def _decisions(layer: dict[str, Any]) -> str:
    """Every decision on the layer: its rule id in bold, then the engine's reason."""
    return "<br>".join(f"<b>{html.escape(rule)}</b>: {html.escape(reason)}"
                       for rule, reason in zip(layer["rules"], layer["reasons"]))


def _timeline_section(record: dict[str, Any], out_dir: Path, stem: str, title: str) -> str:
    measured = record.get("measured")
    source = (f"measured: {record.get('meter', 'meter')}, one real step at the same positions"
              if measured and any(m is not None for m in measured) else "no measurement in this record")
    return _emit_chart(charts.timeline(record, title), out_dir, stem,
                       "memory through one training step: each layer's forward, each layer's backward (reverse "
                       f"order), the optimizer step; predicted before and after the plan, the budget as a line ({source})")


def _plan_section(plan: dict[str, Any], out_dir: Path, stem: str, title: str,
                  timeline: dict[str, Any] | None = None) -> str:
    parts = [f"<p>budget {_mib(plan['budget_bytes'])}, unoptimized peak {_mib(plan['unoptimized_peak_bytes'])}, "
             f"predicted peak {_mib(plan['predicted_peak_bytes'])}, pressure {plan['pressure']:.2f}"
             f"{' — skipped: ' + html.escape(plan['skip_reason']) if plan['skipped'] else ''}</p>"]
    if timeline:
        parts.append(_timeline_section(timeline, out_dir, stem.removesuffix("-layers") + "-timeline",
                                       f"{title}: memory through the step"))
    parts.append(_emit_chart(charts.layer_bars(_layer_rows(plan), title), out_dir, stem,
                             "per-layer memory: faded bars before the plan, solid bars after"))
    rows = "".join(
        f"<tr><td class=l>{html.escape(l['name'])}</td><td class=l>{html.escape(', '.join(l['techniques']) or '—')}</td>"
        f"<td>{_mib(l['bytes_before'])}</td><td>{_mib(l['bytes_after'])}</td>"
        f"<td class='l why'>{_decisions(l)}</td></tr>"
        for l in plan["layers"])
    parts.append("<table class=plan><tr><th class=l>layer</th><th class=l>techniques</th><th>before</th><th>after</th>"
                 f"<th class=l>decisions (rule: reason)</th></tr>{rows}</table>")
    return "\n".join(parts)


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def write_plan_report(plan_json: str, out_html: str | Path, timeline: dict[str, Any] | None = None) -> Path:
    """One plan as an HTML page (``memscale plan --html``): its step timeline when
    ``timeline`` is given (``memscale.timeline_record``), the per-layer chart and the
    per-layer table with every decision's rule and reason."""
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    plan = json.loads(plan_json)
    out.write_text(_page("MemScale plan", _plan_section(plan, out.parent, out.stem + "-layers", "plan", timeline)))
    log.info("wrote %s", out)
    return out


def write_results_report(records: list[dict[str, Any]], out_html: str | Path) -> Path:
    """Benchmark records as an HTML page: per scenario, a table of figures and ratios,
    measured vs predicted peaks, and for each record with a plan its per-layer chart and
    decisions, and its step timeline where the record carries one (``"timeline"``)."""
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    sections = []
    for scenario in sorted({r.get("scenario", "?") for r in records}):
        rows = [r for r in records if r.get("scenario") == scenario]
        body = [f"<section class=scenario id='{html.escape(scenario)}'><h2>{html.escape(scenario)}</h2>"]
        ratio_names = sorted({k for r in rows for k in r.get("ratios", {})})
        head = "".join(f"<th>{html.escape(n)}</th>" for n in ratio_names)
        table = "".join(
            f"<tr><td class=l>{html.escape(str(r.get('model', '')))}</td><td class=l>{html.escape(str(r.get('label', '')))}</td>"
            f"<td>{_mib(r.get('budget_bytes'))}</td><td>{_mib(r.get('measured_peak_bytes'))}</td>"
            f"<td>{_mib(r.get('predicted_peak_bytes'))}</td>"
            + "".join(f"<td>{r.get('ratios', {}).get(n, float('nan')):.3f}</td>" for n in ratio_names) + "</tr>"
            for r in rows)
        body.append(f"<table class=records><tr><th class=l>model</th><th class=l>label</th><th>budget</th><th>measured</th>"
                    f"<th>predicted</th>{head}</tr>{table}</table>")
        peak_rows = [{"label": f"{r.get('model', '')} {r.get('label', '')}".strip(), "measured": r["measured_peak_bytes"],
                      "predicted": r["predicted_peak_bytes"], "budget": r.get("budget_bytes")}
                     for r in rows if r.get("measured_peak_bytes") and r.get("predicted_peak_bytes")]
        if peak_rows:
            body.append(_emit_chart(charts.peaks(peak_rows, f"{scenario}: measured vs predicted peak"), out.parent,
                                    f"{out.stem}-{scenario}-peaks", "measured vs predicted peak per record"))
        for i, r in enumerate(rows):
            if r.get("plan"):
                body.append(f"<h3>{html.escape(str(r.get('label', i)))}</h3>")
                body.append(_plan_section(json.loads(r["plan"]), out.parent, f"{out.stem}-{scenario}-{i}-layers",
                                          f"{scenario} {r.get('label', i)}", r.get("timeline")))
        body.append("</section>")
        sections.append("\n".join(body))
    out.write_text(_page("MemScale benchmark report", "\n".join(sections)))
    log.info("wrote %s", out)
    return out
