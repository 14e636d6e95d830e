"""Weight backends: where a layer's weights live and how they are read and written."""

from __future__ import annotations

from .base import MemoryReport, WeightBackend
from .float_backend import FloatBackend, FloatParams


def make_float(shape, params, noise, seed):
    """Factory for ``backend = "float"`` device models."""
    if noise is not None:
        from ..noise import wrap_with_noise

        return wrap_with_noise(FloatBackend(shape, params), noise, seed)
    return FloatBackend(shape, params)


__all__ = ["WeightBackend", "MemoryReport", "FloatBackend", "FloatParams", "make_float"]
