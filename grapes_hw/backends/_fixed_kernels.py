"""Numba kernels of the fixed-point backend (imported lazily: never at package import).

One fused pass per write: ``v = q + scale * g`` (or ``v = scale * g`` when setting from
floats), rounding (nearest or stochastic), saturation at ``+-qmax``, the integer store, the
float shadow copy ``w = q * step`` and the count of cells whose integer changed.

Stochastic rounding, ``floor(v + u)``: every cell has its own 16-bit xorshift generator
(Metcalf's full-period triple 7, 9, 8: the state runs through all 65535 nonzero values), kept
in a ``uint16`` array the size of the weights and seeded from the backend's seed. Each write
advances the generator of every cell it rounds by one step and uses ``u = state / 65536``.
Over a period ``u`` takes every value k/65536, k = 1..65535, once, so its mean is exactly 1/2:
the rounding is unbiased up to the 2**-16 resolution of ``u``. Because every cell has its own
stream the results do not depend on how rows are split between threads (bit-for-bit
reproducible with any thread count), and the loop is shifts and xors on 16-bit lanes, which
LLVM vectorises (about as fast as the rest of the pass).

``fastmath={"reassoc"}`` only lets LLVM vectorise the per-row change count (a float sum of
0/1 values, exact below 2**24); the rounding arithmetic has no reassociable chains.

The arithmetic type follows ``unit`` (``np.float32(1)`` or ``np.float64(1)``): the backend
uses float32 for <= 8 bits (|q| <= 127 leaves 17 fraction bits for ``v``) and float64 for
wider formats.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True, fastmath={"reassoc"})
def apply_write(q, w, g, scale, unit, step, qmax, accumulate, stochastic, state):
    """In place: ``q <- clamp(round((q if accumulate else 0) + scale * g), -qmax, qmax)``,
    ``w <- q * step``; returns the number of cells whose integer value changed.

    When not accumulating (setting from floats), values within 1e-3 of an integer are snapped
    to it first, so a float copy of the stored weights stores back exactly even with
    stochastic rounding.
    """
    n, m = q.shape
    changed = np.zeros(n, np.float64)
    hi = qmax * unit
    lo = -hi
    inv = np.float32(1.0 / 65536.0)
    for i in prange(n):
        c = np.float32(0)  # float count: vectorises as a reassociable sum, exact < 2**24
        for j in range(m):
            old = q[i, j]
            if accumulate:
                v = old * unit + scale * g[i, j]
            else:
                v = scale * g[i, j]
                r0 = np.rint(v)
                if abs(v - r0) < 1e-3:
                    v = r0
            if stochastic:
                x = state[i, j]
                x ^= np.uint16(x << np.uint16(7))
                x ^= np.uint16(x >> np.uint16(9))
                x ^= np.uint16(x << np.uint16(8))
                state[i, j] = x
                r = np.floor(v + np.float32(x) * inv)
            else:
                r = np.rint(v)
            r = min(max(r, lo), hi)
            c += np.float32(r != old)
            q[i, j] = r
            w[i, j] = r * step
        changed[i] = c
    return int(changed.sum())
