"""Every number in the README's results table comes from a committed JSON file."""
from pathlib import Path

from memscale.bench.table import BEGIN, END, results_table

ROOT = Path(__file__).resolve().parents[2]


def test_readme_table_is_generated_from_the_committed_results():
    readme = (ROOT / "README.md").read_text()
    table = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert table == results_table(ROOT / "benchmarks" / "results")
    assert table.count("\n") >= 3, "the results table lists committed records"
