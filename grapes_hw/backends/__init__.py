"""Weight backends: where a layer's weights live and how they are read and written."""

from __future__ import annotations

from grapes_hw.backends.base import MemoryReport, WeightBackend
from grapes_hw.backends.float_backend import FloatBackend, FloatParams


def make_float(shape, params, seed):
    """Factory for ``backend = "float"`` device models."""
    return FloatBackend(shape, params)


__all__ = ["WeightBackend", "MemoryReport", "FloatBackend", "FloatParams", "make_float"]
