"""Weight initialisation (He uniform), as a pure function of shape and generator.
"""

from __future__ import annotations

import math

import torch


def he_uniform(shape: tuple[int, int], generator: torch.Generator,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """He-uniform init, U(-sqrt(6/n_in), sqrt(6/n_in)), the GRAPES reference default."""
    limit = math.sqrt(6.0 / shape[1])
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    return (u * 2 - 1).mul_(limit).to(dtype)
