"""The HTML report: written from records, opened in headless Chromium, charts present."""
import re
import shutil
import subprocess
import sys

import pytest

import memscale
from memscale.testing import models
from memscale.report import write_results_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _records():
    model = models.build("gpt", seed=0)
    graph = memscale.profile(model, models.example_inputs("gpt", model, batch=2))
    hw = memscale.Hardware.from_json('{"devices": [], "host_total_bytes": 8589934592}')
    unoptimized = memscale.plan(graph, memscale.Config(mode="off"), hardware=hw).unoptimized_peak_bytes
    try:  # training keeps weights resident: 80% may be below the floor; then plan at the floor
        plan = memscale.plan(graph, memscale.Config(memory_budget=int(unoptimized * 0.8)), hardware=hw)
    except memscale.InfeasibleBudgetError as refusal:
        plan = memscale.plan(graph, memscale.Config(memory_budget=refusal.min_budget_bytes), hardware=hw)
    assert any(layer.techniques for layer in plan.layers)
    return [{"scenario": "training_sweep", "model": "gpt", "label": "80%", "budget_bytes": plan.budget_bytes,
             "measured_peak_bytes": int(plan.predicted_peak_bytes * 0.97), "predicted_peak_bytes": plan.predicted_peak_bytes,
             "ratios": {"peak_over_budget": 0.9}, "plan": plan.to_json()},
            {"scenario": "tiling_lce", "model": "lce", "label": "32k", "ratios": {"peak_ratio": 0.1}}], plan


def test_report_has_tables_charts_and_pngs(tmp_path):
    records, plan = _records()
    out = write_results_report(records, tmp_path / "report.html")
    page = out.read_text()
    assert page.count("<section class=scenario") == 2
    assert page.count('<figure class="chart"') == 2  # peaks + per-layer bars of the one plan
    assert "peak_over_budget" in page and "0.900" in page
    for layer in plan.layers:
        assert f"<td class=l>{layer.name}</td>" in page
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(pngs) == 2 and all((tmp_path / p).stat().st_size > 5000 for p in pngs)


def test_plan_html_from_the_cli(tmp_path):
    graph = tmp_path / "graph.json"
    model = models.build("gpt", seed=0)
    graph.write_text(memscale.profile(model, models.example_inputs("gpt", model, batch=2)).to_json())
    hw = tmp_path / "hw.json"
    hw.write_text('{"devices": [], "host_total_bytes": 8589934592}')
    done = subprocess.run([sys.executable, "-m", "memscale", "plan", "--graph", str(graph), "--budget", "20MiB",  # training keeps weights resident: at least 15.2 MiB
                           "--hardware", str(hw), "--html", str(tmp_path / "plan.html")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert '<figure class="chart"' in (tmp_path / "plan.html").read_text()
    assert (tmp_path / "plan-layers.png").stat().st_size > 5000


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/test.sh installs it)")
def test_report_opens_in_headless_chromium(tmp_path):
    records, _ = _records()
    out = write_results_report(records, tmp_path / "report.html")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # The browser parsed the inline SVG charts: figures, svg roots and drawn bars are in its DOM.
    assert len(re.findall(r'<figure class="chart"', dom.stdout)) == 2
    assert len(re.findall(r"<svg", dom.stdout)) >= 2
    assert len(re.findall(r"<path", dom.stdout)) > 20
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *flags, "--window-size=1200,1600", f"--screenshot={shot}", out.as_uri()],
                   capture_output=True, text=True, timeout=120, check=True)
    assert shot.stat().st_size > 20000  # a rendered page with charts, not a blank one
