"""Benchmark suite: named scenarios, each run in its own process, each writing JSON
records with ratios against baselines measured in the same run."""
