"""MemScale: make a PyTorch model fit the memory it is given."""
import torch  # noqa: F401  (loads libtorch before the extension module)

__version__ = "0.1.0"
