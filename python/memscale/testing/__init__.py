"""Reference models and helpers for tests, benchmarks and the demo.

Nothing under ``memscale.runtime`` imports this package: the runtime works on any
``nn.Module`` and never special-cases these models.
"""
