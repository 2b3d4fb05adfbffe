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
from .config import Config
from .errors import ConfigError, InfeasibleBudgetError, MemScaleError
from .hardware import detect_hardware
from .memory import track_memory
from .profile import profile
from . import offload
from .scheduler import Scheduler
from .wrap import plan_of, unwrap, wrap

ModelGraph = _C.ModelGraph
Hardware = _C.Hardware
Plan = _C.Plan

__version__ = _C.__version__

_install_logging()

__all__ = [
    "Config",
    "ConfigError",
    "Hardware",
    "InfeasibleBudgetError",
    "MemScaleError",
    "ModelGraph",
    "Plan",
    "Scheduler",
    "__version__",
    "detect_hardware",
    "offload",
    "plan_of",
    "profile",
    "track_memory",
    "unwrap",
    "wrap",
]
