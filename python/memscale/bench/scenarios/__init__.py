"""One module per scenario. Each defines ``run(quick: bool) -> list[dict]`` and can be
run alone: ``python -m memscale.bench.scenarios.NAME [--quick] [--out FILE]``."""
