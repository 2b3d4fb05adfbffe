"""MemScale: make a PyTorch model fit the memory it is given.

Example:
    >>> import memscale
    >>> cfg = memscale.Config(memory_budget="4GiB")
    >>> cfg.mode
    'auto'
"""
import torch  # noqa: F401  (loads libtorch before the extension module links against it)

from . import _C
from ._logging import install as _install_logging
from .config import Config, config_schema
from .errors import ConfigError, InfeasibleBudgetError, MemScaleError
from .hardware import detect_hardware
from .memory import track_memory
from .profiler.profile import profile
from .runtime import inference as offload  # the inference API, as memscale.offload
from .scheduler import Scheduler
from .planning import calibrate_reservation, plan, plan_cost, plan_timeline, search_tier_policy, tier_problem
from .timeline import record_timeline, timeline_of, timeline_record
from .api import optimizer_for, plan_of, unwrap, wrap
from .advisor import FitResult, fit, fit_frontier
from . import optim  # memscale.optim.offloaded: optimizer state on the next tier

format_bytes = _C.format_bytes
parse_size = _C.parse_size
ModelGraph = _C.ModelGraph
Hardware = _C.Hardware
Plan = _C.Plan
PlanTimeline = _C.PlanTimeline
TierSplit = _C.TierSplit
TierPolicy = _C.TierPolicy
TierProblem = _C.TierProblem
Calibration = _C.Calibration
ReservationSample = _C.ReservationSample

__version__ = _C.__version__


def __getattr__(name: str):
    # memscale.ContinuousScheduler batches through transformers' Cache API: imported on first use
    # (and left out of __all__), so memscale itself and `import *` do not need transformers
    if name == "ContinuousScheduler":
        from .serving import ContinuousScheduler

        return ContinuousScheduler
    raise AttributeError(f"module 'memscale' has no attribute {name!r}")


_install_logging()

__all__ = [
    "Calibration",
    "Config",
    "FitResult",
    "ConfigError",
    "Hardware",
    "InfeasibleBudgetError",
    "MemScaleError",
    "ModelGraph",
    "Plan",
    "PlanTimeline",
    "ReservationSample",
    "Scheduler",
    "TierPolicy",
    "TierProblem",
    "TierSplit",
    "__version__",
    "calibrate_reservation",
    "config_schema",
    "detect_hardware",
    "fit",
    "fit_frontier",
    "format_bytes",
    "offload",
    "optim",
    "optimizer_for",
    "parse_size",
    "plan",
    "plan_cost",
    "plan_of",
    "plan_timeline",
    "profile",
    "record_timeline",
    "search_tier_policy",
    "tier_problem",
    "timeline_of",
    "timeline_record",
    "track_memory",
    "unwrap",
    "wrap",
]
