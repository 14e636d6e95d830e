"""Numba kernels of the learning step (imported lazily, never at package import).

On 2 CPU cores the per-call overhead of small torch operations rivals the matrix products of
a 784-256-256-256-10 network at batch 64, so the per-node work of GRAPES is fused:

* ``row_abs_sums``: the L1 norm of every row of ``W`` in one parallel pass (the importance);
* ``act_grad_scale``: ``g <- g * f'(a) * m`` in one pass, where ``f'`` comes from the layer's
  output (ReLU: ``h > 0``; tanh: ``1 - h^2``) and ``m`` is the GRAPES factor (or 1).

Compiled on first use and cached on disk (``cache=True``).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, fastmath=True)
def row_abs_sums(w, out):
    n, m = w.shape
    for i in range(n):
        s = w.dtype.type(0.0)  # accumulate in the weights' precision: SIMD-friendly
        for j in range(m):
            s += abs(w[i, j])
        out[i] = s


@njit(cache=True, fastmath=True)
def act_grad_scale(g, h, m, relu, scaled):
    """In place ``g[b, i] *= f'(a[b, i]) * m[i]`` (``m`` ignored unless ``scaled``)."""
    nb, n = g.shape
    for b in range(nb):
        for i in range(n):
            hv = h[b, i]
            if relu:
                d = 1.0 if hv > 0 else 0.0
            else:
                d = 1.0 - hv * hv
            if scaled:
                d *= m[i]
            g[b, i] *= d


def ones(n: int, dtype) -> np.ndarray:
    return np.ones(n, dtype=dtype)
