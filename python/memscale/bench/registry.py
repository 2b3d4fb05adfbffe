"""The scenarios ``memscale bench`` knows, in the order they run."""
from __future__ import annotations

# name -> (module run as ``python -m MODULE --out FILE [--quick]``, one-line description)
SCENARIOS: dict[str, tuple[str, str]] = {
    "estimate_accuracy": ("benchmarks.estimate_accuracy", "predicted vs measured unoptimized training peak, 6 models x 2 batches"),
    "profile_1b": ("benchmarks.profile_1b", "time and extra RAM of profiling a 1.1B Llama defined on meta"),
}


def resolve(names: list[str] | None) -> list[str]:
    """Scenario names to run: all when none are named; unknown names are an error."""
    from ..errors import ConfigError

    if not names:
        return list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ConfigError(f"--scenario: unknown {', '.join(unknown)}; allowed: {', '.join(SCENARIOS)}")
    return names
