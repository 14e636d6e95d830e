"""Numba kernels of the fixed-point backend (imported lazily: never at package import).

One fused pass per write: ``v = q + scale * g`` (``accumulate``) or ``v = scale * g``
(``assign``, setting from floats), rounding (nearest or stochastic), saturation at
``+-qmax``, the integer store, the float shadow copy ``w = q * step`` and the count of cells
whose integer changed.

Stochastic rounding, ``floor(v + u)``, draws ``u`` from a counter-based generator: the
backend gives every write a 32-bit ``key`` (a hash of its seed and a write counter) and cell
``idx = i * n_in + j`` uses ``h = mix32(key + idx * 0x9E3779B9)``, ``u = (h >> 8) / 2**24``
(all mod 2**32), where ``mix32`` is a one-multiply xorshift-multiply-xorshift hash (a
bijection of 32-bit words). Within one write distinct cells get distinct words; across writes
the key changes (the backend derives it with the two-multiply "lowbias32"), so every cell sees
a fresh pseudo-random stream. The Weyl step ``0x9E3779B9`` between neighbouring cells matters:
hashing ``key + idx`` directly with one multiply left neighbouring ``u`` correlated
(r = 0.15 at lag 1, 0.3 at lag 784); with it, |r| < 0.002 at those lags (also tested through
the rounding decisions). One multiply instead of lowbias32's two keeps stochastic rounding
within the speed target (fixed8 / float32 epoch 1.31 -> 1.27-1.29).

``u`` takes the 2**24 values k / 2**24, so ``E[u] = 1/2 - 2**-25``: the rounding is
unbiased up to 3e-8 of one LSB. Because ``u`` depends only on (key, cell), results are bit
for bit reproducible, and no generator state is kept or streamed through memory: a write
reads ``g`` and ``q`` and writes ``q`` and the shadow, nothing else.

The kernels run on the calling thread: running the write on torch's OpenMP threads (with
the update's product by MKL's sgemm_ in the same region) or numba's ``parallel=True`` was
not measurably faster in a whole epoch (1.02x, benchmarks/README.md), so both were removed.

Speed: every value in the inner loop has the arithmetic type of ``unit`` (``np.float32(1)``
for <= 8 bits, where |q| <= 127 leaves 17 fraction bits for ``v``; ``np.float64(1)`` for wider
formats): the bounds ``hi`` and the random term are passed or formed in that type, and the
change count is a float of that type, so there is no 64-bit lane and LLVM vectorises the loop
8 floats wide (the hash is 32-bit multiplies, shifts and xors). ``fastmath={"reassoc"}`` only
lets LLVM vectorise the per-row change count (a sum of 0/1 values, exact below 2**24); the
rounding arithmetic has no reassociable chains.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_U24 = 1.0 / 16777216.0


_WEYL = 0x9E3779B9
"""Odd 32-bit constant (2**32 / golden ratio): cell ``idx`` enters the hash as ``idx * _WEYL``."""


@njit(inline="always")
def _mix32(x):
    x = np.uint32(x ^ (x >> np.uint32(16)))
    x = np.uint32(x * np.uint32(0x21F0AAAD))
    return np.uint32(x ^ (x >> np.uint32(15)))


@njit(inline="always")
def _row_base(k, i, m):
    """The hash input of cell (i, 0): ``key + i * m * _WEYL`` (mod 2**32)."""
    return np.uint32(k + np.uint32(np.uint32(i * m) * np.uint32(_WEYL)))


@njit(inline="always")
def _uniform(base, j, inv):
    """``u`` in [0, 1) for the cell at offset ``j`` from ``base`` (type of ``inv``)."""
    x = np.uint32(base + np.uint32(np.uint32(j) * np.uint32(_WEYL)))
    return np.float32(np.uint32(_mix32(x) >> np.uint32(8))) * inv


@njit(inline="always")
def _accumulate_row(q, w, g, i, scale, unit, step, hi, stochastic, k, inv):
    """One row of ``accumulate``; returns the row's change count (type of ``unit``)."""
    m = q.shape[1]
    lo = -hi
    c = unit - unit
    if stochastic:
        base = _row_base(k, i, m)
        for j in range(m):
            old = q[i, j]
            r = np.floor(old * unit + scale * g[i, j] + _uniform(base, j, inv))
            r = min(max(r, lo), hi)
            c += r != old
            q[i, j] = r
            w[i, j] = r * step
    else:
        for j in range(m):
            old = q[i, j]
            r = np.rint(old * unit + scale * g[i, j])
            r = min(max(r, lo), hi)
            c += r != old
            q[i, j] = r
            w[i, j] = r * step
    return c


@njit(cache=True, fastmath={"reassoc"})
def accumulate(q, w, g, scale, unit, step, hi, stochastic, key):
    """In place ``q <- clamp(round(q + scale * g), -hi, hi)``, ``w <- q * step``; returns the
    number of cells whose integer value changed. ``scale`` and ``hi`` have the type of
    ``unit``; ``step`` is float32 (the shadow's value ``q * step`` rounds once to float32);
    ``key`` is this write's 32-bit random key (used only when ``stochastic``)."""
    n = q.shape[0]
    inv = unit * np.float32(_U24)
    k = np.uint32(key)
    total = 0.0
    for i in range(n):
        total += _accumulate_row(q, w, g, i, scale, unit, step, hi, stochastic, k, inv)
    return int(total)


@njit(cache=True)
def assign(q, w, g, scale, unit, step, hi, stochastic, key):
    """In place ``q <- clamp(round(scale * g), -hi, hi)``, ``w <- q * step`` (programming
    from floats). Values within 1e-3 of an integer are snapped to it first, so a float copy of
    the stored weights stores back exactly even with stochastic rounding."""
    n, m = q.shape
    lo = -hi
    inv = unit * np.float32(_U24)
    k = np.uint32(key)
    for i in range(n):
        base = _row_base(k, i, m)
        for j in range(m):
            v = scale * g[i, j]
            r = np.rint(v)
            if stochastic and abs(v - r) >= 1e-3:
                r = np.floor(v + _uniform(base, j, inv))
            r = min(max(r, lo), hi)
            q[i, j] = r
            w[i, j] = r * step
