"""Profiler internals: layer discovery, fake-tensor estimation, measurement, graph assembly.

The public entry points are :func:`memscale.profiler.profile.profile` (``memscale.profile``)
and :func:`memscale.profiler.profile.profile_dict`. :mod:`.discovery` is the one layer
discovery and kind classification (the inference runtime's paging units use it too);
:mod:`.storage` the one bytes-per-storage helper.
"""
from .discovery import LayerSpec, discover_layers

__all__ = ["LayerSpec", "discover_layers"]
