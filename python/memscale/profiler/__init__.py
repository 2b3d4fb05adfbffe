"""Profiler internals: layer discovery, fake-tensor estimation, measurement, graph assembly.

The public entry points are :func:`memscale.profile.profile` and
:func:`memscale.profile.profile_dict`.
"""
from .discovery import LayerSpec, discover_layers

__all__ = ["LayerSpec", "discover_layers"]
