"""The HTML report: written from records, opened in headless Chromium, charts present."""
import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import memscale
from memscale.testing import models
from memscale.report import charts, write_plan_report, write_results_report

DATA = Path(__file__).resolve().parents[1] / "data"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _records():
    model = models.build("gpt", seed=0)
    graph = memscale.profile(model, models.example_inputs("gpt", model, batch=2))
    hw = memscale.Hardware.from_json('{"devices": [], "host_total_bytes": 8589934592}')
    unoptimized = memscale.plan(graph, memscale.Config(mode="off"), hardware=hw).unoptimized_peak_bytes
    cfg = memscale.Config(memory_budget=int(unoptimized * 0.8))
    try:  # training keeps weights resident: 80% may be below the floor; then plan at the floor
        plan = memscale.plan(graph, cfg, hardware=hw)
    except memscale.InfeasibleBudgetError as refusal:
        cfg = memscale.Config(memory_budget=refusal.min_budget_bytes)
        plan = memscale.plan(graph, cfg, hardware=hw)
    assert any(layer.techniques for layer in plan.layers)
    timeline = memscale.timeline_record(memscale.plan_timeline(graph, plan, cfg, hw))
    return [{"scenario": "training_sweep", "model": "gpt", "label": "80%", "budget_bytes": plan.budget_bytes,
             "measured_peak_bytes": int(plan.predicted_peak_bytes * 0.97), "predicted_peak_bytes": plan.predicted_peak_bytes,
             "ratios": {"peak_over_budget": 0.9}, "plan": plan.to_json(), "timeline": timeline},
            {"scenario": "tiling_lce", "model": "lce", "label": "32k", "ratios": {"peak_ratio": 0.1}}], plan


def test_report_has_tables_charts_and_pngs(tmp_path):
    records, plan = _records()
    out = write_results_report(records, tmp_path / "report.html")
    page = out.read_text()
    assert page.count("<section class=scenario") == 2
    assert page.count('<figure class="chart"') == 3  # peaks, the plan's step timeline and per-layer bars
    assert 'data-chart="report-training_sweep-0-timeline"' in page and "no measurement in this record" in page
    assert "peak_over_budget" in page and "0.900" in page
    for layer in plan.layers:
        assert f"<td class=l>{layer.name}</td>" in page
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(pngs) == 3 and all((tmp_path / p).stat().st_size > 5000 for p in pngs)


def test_plan_html_from_the_cli(tmp_path):
    graph = tmp_path / "graph.json"
    model = models.build("gpt", seed=0)
    graph.write_text(memscale.profile(model, models.example_inputs("gpt", model, batch=2)).to_json())
    hw = tmp_path / "hw.json"
    hw.write_text('{"devices": [], "host_total_bytes": 8589934592}')
    done = subprocess.run([sys.executable, "-m", "memscale", "plan", "--graph", str(graph), "--budget", "20MiB",  # training keeps weights resident: at least 15.2 MiB
                           "--hardware", str(hw), "--html", str(tmp_path / "plan.html")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "plan.html").read_text()
    assert page.count('<figure class="chart"') == 2 and 'data-chart="plan-timeline"' in page  # a training graph
    assert (tmp_path / "plan-layers.png").stat().st_size > 5000
    assert (tmp_path / "plan-timeline.png").stat().st_size > 5000


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/test.sh installs it)")
def test_report_opens_in_headless_chromium(tmp_path):
    records, _ = _records()
    out = write_results_report(records, tmp_path / "report.html")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # The browser parsed the inline SVG charts: figures, svg roots and drawn bars are in its DOM.
    assert len(re.findall(r'<figure class="chart"', dom.stdout)) == 3
    assert len(re.findall(r"<svg", dom.stdout)) >= 3
    assert len(re.findall(r"<path", dom.stdout)) > 20
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *flags, "--window-size=1200,1600", f"--screenshot={shot}", out.as_uri()],
                   capture_output=True, text=True, timeout=120, check=True)
    assert shot.stat().st_size > 20000  # a rendered page with charts, not a blank one


def _wrapped_timeline():
    """A GPT wrapped at 80% of its unoptimized peak (or at the floor), its predicted
    timeline and one measured step of the wrapped model at the same positions."""
    model = models.build("gpt", seed=0)
    batch = models.example_inputs("gpt", model, batch=2)
    graph = memscale.profile(model, batch)
    hw = memscale.detect_hardware()
    unoptimized = memscale.plan(graph, memscale.Config(mode="off"), hardware=hw).unoptimized_peak_bytes
    cfg = memscale.Config(memory_budget=int(unoptimized * 0.8))
    try:
        memscale.plan(graph, cfg, hardware=hw)
    except memscale.InfeasibleBudgetError as refusal:
        cfg = memscale.Config(memory_budget=refusal.min_budget_bytes)
    memscale.wrap(model, cfg, example_inputs=batch)
    plan = memscale.plan_of(model)
    try:
        timeline = memscale.plan_timeline(graph, plan, cfg, hw)
        # What a wrapped model gives from the graph, plan and Config of its wrap.
        assert memscale.timeline_of(model, batch, measure=False) == memscale.timeline_record(timeline)
        measured = memscale.record_timeline(model, batch, plan)
    finally:
        memscale.unwrap(model)
    with pytest.raises(memscale.MemScaleError, match="not wrapped for training"):
        memscale.timeline_of(model, batch)
    return plan, timeline, measured


def test_plan_timeline_maxima_are_the_plans_peaks():
    plan, timeline, measured = _wrapped_timeline()
    assert any(layer.techniques for layer in plan.layers)
    n = len(plan.layers)
    assert [p.label for p in timeline.points][:n] == [f"forward {layer.name}" for layer in plan.layers]
    assert [p.label for p in timeline.points][n:2 * n] == [f"backward {layer.name}" for layer in reversed(plan.layers)]
    assert max(p.before_bytes for p in timeline.points) == plan.unoptimized_peak_bytes
    assert max(p.after_bytes for p in timeline.points) == plan.predicted_peak_bytes
    record = memscale.timeline_record(timeline, measured)
    assert record["meter"] == "memscale counting allocator (CPU)"
    # Every forward and the optimizer step were measured; the step fits the budget it was planned for.
    assert all(record["measured"][i] for i in range(n)) and record["measured"][-1]
    assert measured.peak_bytes <= plan.budget_bytes * 1.05


def test_record_timeline_peak_is_the_measured_step_peak():
    from memscale.testing.measure import measured_step_peak

    model = models.build("gpt", seed=0)
    batch = models.example_inputs("gpt", model, batch=2)
    names = [layer.name for layer in memscale.profile(model, batch).layers]
    reference = measured_step_peak(models.build("gpt", seed=0), batch, seed=0)
    measured = memscale.record_timeline(model, batch, names)
    assert set(measured.bytes) == {f"{phase} {name}" for phase in ("forward", "backward") for name in names} | {
        "optimizer step"}
    # The positions cover the step but for the loss between the last forward and the first
    # backward: their peak is within a few percent of the step's.
    assert 0.9 * reference <= measured.peak_bytes <= reference


def test_plan_timeline_refuses_another_machine():
    plan, timeline, _ = _wrapped_timeline()
    assert len(timeline.points) == 2 * len(plan.layers) + 1
    model = models.build("gpt", seed=0)
    graph = memscale.profile(model, models.example_inputs("gpt", model, batch=2))
    gpu = memscale.Hardware.from_json(str(DATA / "hardware" / "gpu_24gib.json"))  # a BLAS workspace, foreach AdamW
    with pytest.raises(memscale.MemScaleError, match="give the graph, hardware and Config the plan was made with"):
        memscale.plan_timeline(graph, plan, memscale.Config(memory_budget=plan.budget_bytes), gpu)


def _colour_mask(pixels, rgb, tolerance=18):
    return (abs(pixels[..., :3].astype(int) - rgb).max(axis=-1) <= tolerance)


def _rgb(hex_colour):
    return [int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/test.sh installs it)")
def test_plan_page_screenshot_shows_timeline_budget_measured_and_reasons(tmp_path):
    import numpy as np
    from PIL import Image

    plan, timeline, measured = _wrapped_timeline()
    out = write_plan_report(plan.to_json(), tmp_path / "plan.html", memscale.timeline_record(timeline, measured))
    page = out.read_text()
    assert "<th class=l>decisions (rule: reason)</th>" in page
    for layer in json.loads(plan.to_json())["layers"]:
        for rule, reason in zip(layer["rules"], layer["reasons"]):
            assert f"<b>{rule}</b>: {reason}" in html.unescape(page)
    assert "memscale counting allocator (CPU)" in page
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"]
    subprocess.run([CHROMIUM, *flags, "--window-size=1400,1100", f"--screenshot={shot}", out.as_uri()],
                   capture_output=True, text=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[1] == 1400
    budget = _colour_mask(pixels, _rgb(charts.TIMELINE_COLORS["budget"]))
    rows = np.flatnonzero(budget.sum(axis=1) > 0.5 * 1400)  # a horizontal line across the plot
    assert rows.size > 0, "no budget line in the screenshot"
    measured_px = _colour_mask(pixels, _rgb(charts.TIMELINE_COLORS["measured"]))
    after_px = _colour_mask(pixels, _rgb(charts.TIMELINE_COLORS["after"]))
    # The timeline is the page's first chart: its plot spans at most its 520 px figure
    # height around the budget line, and both curves are drawn there.
    band = slice(max(0, rows[0] - 520), rows[0] + 520)
    assert measured_px[band].sum() > 200, "no measured curve near the budget line"
    assert after_px[band].sum() > 200, "no predicted curve near the budget line"
    # Nothing of the chart is cut off at 1,400 px: the right-most 20 columns are page background.
    assert (pixels[:, -20:] > 240).all()
