"""Every benchmark scenario runs from an installed wheel, outside any checkout.

The wheel ships the package directory as it is (scikit-build-core's
``wheel.packages = ["python/memscale"]``), so a copy of the directory of the memscale in
use, alone on PYTHONPATH and run from an unrelated directory, is what a user of the wheel
has: each scenario module, the goals file and a quick run must come from that copy.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import memscale

PACKAGE = Path(memscale.__file__).resolve().parent
REPOSITORY = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent("""
    import importlib, importlib.util, json, sys
    from pathlib import Path

    site, repository = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    import memscale
    from memscale.bench.goals import default_goals_path, load_goals
    from memscale.bench.registry import SCENARIOS, resolve

    def inside(path, folder):
        return Path(path).resolve().is_relative_to(folder)

    assert inside(memscale.__file__, site), memscale.__file__
    found = {}
    for name in resolve(None):
        module, _ = SCENARIOS[name]
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin and inside(spec.origin, site), (name, spec and spec.origin)
        importlib.import_module(module)
        found[name] = spec.origin
    assert inside(default_goals_path(), site), default_goals_path()
    goals = load_goals(default_goals_path())
    outside = sorted({m.__file__ for m in list(sys.modules.values())
                      if getattr(m, "__file__", None) and inside(m.__file__, repository)})
    print(json.dumps({"scenarios": found, "goals": len(goals), "from_repository": outside}))
""")


def _wheel_like_copy(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    site = tmp_path / "site"
    shutil.copytree(PACKAGE, site / "memscale", ignore=shutil.ignore_patterns("__pycache__"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONPATH"] = str(site)
    return site, elsewhere, env


def test_every_scenario_imports_from_a_copy_of_the_package_alone(tmp_path):
    site, elsewhere, env = _wheel_like_copy(tmp_path)
    done = subprocess.run([sys.executable, "-c", CHILD, str(site), str(REPOSITORY)], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    from memscale.bench.registry import SCENARIOS

    assert sorted(got["scenarios"]) == sorted(SCENARIOS)
    assert got["goals"] >= 10
    assert got["from_repository"] == [], "imported from the checkout, not from the copied package"


def test_a_quick_scenario_runs_end_to_end_from_the_copy(tmp_path):
    site, elsewhere, env = _wheel_like_copy(tmp_path)
    out = tmp_path / "records.json"
    # --no-timing: the planning-time goal is wall clock; this checks the path, not the machine.
    done = subprocess.run([sys.executable, "-m", "memscale", "bench", "--quick", "--scenario", "planning_speed",
                           "--check", "--no-timing", "--out", str(out)], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "goals:" in done.stderr and "0 missed" in done.stderr, done.stderr[-2000:]
    records = json.loads(out.read_text())["records"]
    assert [r["scenario"] for r in records] == ["planning_speed"]
    assert records[0]["quick"] is True
    # The package copy is in no git checkout: the record names no commit of the repository.
    assert records[0]["machine"]["commit"] is None
