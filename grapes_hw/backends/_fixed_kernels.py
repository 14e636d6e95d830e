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
unbiased up to 3e-8 of one LSB. Because ``u`` depends only on (key, cell), results do not
depend on how rows are split between threads (bit for bit reproducible with any thread
count), and no generator state is kept or streamed through memory: a write reads ``g`` and
``q`` and writes ``q`` and the shadow, nothing else.

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
from numba import carray, cfunc, njit, prange, types

from .._ptr import (
    _call_int,
    _f32_ptr,
    _f64_ptr,
    _gomp_parallel,
    _i8_ptr,
    _i16_ptr,
    _i64_ptr,
    _sgemm,
)

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


@njit(cache=True, parallel=True, fastmath={"reassoc"})
def accumulate(q, w, g, scale, unit, step, hi, stochastic, key):
    """In place ``q <- clamp(round(q + scale * g), -hi, hi)``, ``w <- q * step``; returns the
    number of cells whose integer value changed. ``scale`` and ``hi`` have the type of
    ``unit``; ``step`` is float32 (the shadow's value ``q * step`` rounds once to float32);
    ``key`` is this write's 32-bit random key (used only when ``stochastic``). Rows are split
    between threads."""
    n = q.shape[0]
    inv = unit * np.float32(_U24)
    k = np.uint32(key)
    changed = np.zeros(n, np.float64)
    for i in prange(n):
        changed[i] = _accumulate_row(q, w, g, i, scale, unit, step, hi, stochastic, k, inv)
    return int(changed.sum())


@njit(cache=True, fastmath={"reassoc"})
def accumulate_serial(q, w, g, scale, unit, step, hi, stochastic, key):
    """``accumulate`` on the calling thread only (same results bit for bit): for small
    layers, where waking a thread pool costs more than the pass."""
    n = q.shape[0]
    inv = unit * np.float32(_U24)
    k = np.uint32(key)
    total = 0.0
    for i in range(n):
        total += _accumulate_row(q, w, g, i, scale, unit, step, hi, stochastic, k, inv)
    return int(total)


# -- the same write on torch's OpenMP threads ------------------------------------------------
# numba's ``parallel=True`` above starts its own OpenMP pool beside torch's; on two cores the
# two pools' spinning threads take turns on the same cores. These cfuncs are handed to
# torch's own libgomp instead (see ``grapes_hw._omp``), one per storage type: int8 cells
# with float32 arithmetic (<= 8 bits) and int16 cells with float64 arithmetic. Rows are
# split between threads as in ``accumulate``; each cell's result depends only on (key, cell),
# so all three versions agree bit for bit.

_BLOCK = 16 + 64
"""int64 words of the argument block: tid and nthreads functions, q, w, g, rows, cols,
scale, step, hi (float64), stochastic, key, sgemm_, delta, x, batch, then one change count
per thread (float64)."""


@njit(inline="always")
def _pool_rows(data, q, scale, hi, unit):
    p = carray(data, _BLOCK, dtype=np.int64)
    pf = carray(data, _BLOCK, dtype=np.float64)
    tid = _call_int(p[0])
    nth = _call_int(p[1])
    n = p[5]
    m = p[6]
    w = carray(_f32_ptr(p[3]), (n, m))
    g = carray(_f32_ptr(p[4]), (n, m))
    step = np.float32(pf[8])
    inv = unit * np.float32(_U24)
    k = np.uint32(p[11])
    stochastic = p[10] != 0
    pf[16 + tid] = _accumulate_rows(q, w, g, n * tid // nth, n * (tid + 1) // nth, scale,
                                    unit, step, hi, stochastic, k, inv)


@njit(cache=True, fastmath={"reassoc"})
def _accumulate_rows(q, w, g, r0, r1, scale, unit, step, hi, stochastic, k, inv):
    """Rows r0..r1-1 of ``accumulate`` (a function of its own: compiled with array
    arguments, LLVM vectorises it as it does ``accumulate``)."""
    c = unit - unit
    for i in range(r0, r1):
        c += _accumulate_row(q, w, g, i, scale, unit, step, hi, stochastic, k, inv)
    return c


@njit(inline="always")
def _pool_gemm_rows(data):
    """``g[r0:r1] = delta[:, r0:r1]^T x`` for this thread's rows, with MKL's sgemm (single
    threaded inside the region): the rows the write reads next are then in this core's
    cache. Slots 12-15: sgemm_, delta, x, batch (0: g is given, no product)."""
    p = carray(data, _BLOCK, dtype=np.int64)
    if p[15] == 0:
        return
    tid = _call_int(p[0])
    nth = _call_int(p[1])
    n = p[5]
    m = p[6]
    r0 = n * tid // nth
    r1 = n * (tid + 1) // nth
    if r1 > r0 and m > 0:
        # Row-major g[r0:r1] (n x m) is the column-major m x (r1 - r0) matrix at g + r0*m:
        # x^T (m x B, 'N') @ delta[:, r0:r1] ('T' of the column-major n x B matrix delta^T).
        _sgemm(p[12], 78, 84, m, r1 - r0, p[15], np.float32(1.0), p[14], m, p[13] + 4 * r0,
               n, np.float32(0.0), p[4] + 4 * r0 * m, m)


# Two entry points because a cfunc has one fixed machine type per value: int8 cells with
# float32 arithmetic, int16 cells with float64. Everything else is in the helpers above.
@cfunc(types.void(types.voidptr), cache=True, fastmath={"reassoc"})
def _pool_accumulate_i8(data):
    _pool_gemm_rows(data)
    p = carray(data, _BLOCK, dtype=np.int64)
    pf = carray(data, _BLOCK, dtype=np.float64)
    _pool_rows(data, carray(_i8_ptr(p[2]), (p[5], p[6])), np.float32(pf[7]),
               np.float32(pf[9]), np.float32(1.0))


@cfunc(types.void(types.voidptr), cache=True, fastmath={"reassoc"})
def _pool_accumulate_i16(data):
    _pool_gemm_rows(data)
    p = carray(data, _BLOCK, dtype=np.int64)
    pf = carray(data, _BLOCK, dtype=np.float64)
    _pool_rows(data, carray(_i16_ptr(p[2]), (p[5], p[6])), np.float64(pf[7]),
               np.float64(pf[9]), np.float64(1.0))


POOL_ACCUMULATE = {np.dtype(np.int8): _pool_accumulate_i8, np.dtype(np.int16): _pool_accumulate_i16}
"""The cfunc for each integer storage type."""
MAX_THREADS = _BLOCK - 16


@njit(cache=True)
def launch_accumulate(gomp_parallel, fn, block, q, w, g, n, m, scale, step, hi, stochastic,
                      key, n_threads, delta, x, batch):
    """Fill the block, run ``fn`` on torch's threads, return the number of changed cells.
    With ``batch`` > 0, ``g`` is first set to ``delta^T x`` row block by row block (the
    block's slot 12 holds the address of sgemm_)."""
    p = carray(_i64_ptr(block), _BLOCK)
    p[13] = delta
    p[14] = x
    p[15] = batch
    pf = carray(_f64_ptr(block), _BLOCK)
    p[2] = q
    p[3] = w
    p[4] = g
    p[5] = n
    p[6] = m
    pf[7] = scale
    pf[8] = step
    pf[9] = hi
    p[10] = stochastic
    p[11] = key
    for t in range(16, _BLOCK):
        pf[t] = 0.0
    _gomp_parallel(gomp_parallel, fn, block, n_threads)
    p[2] = 0  # no pointer outlives the call
    p[3] = 0
    p[4] = 0
    p[13] = 0
    p[14] = 0
    total = 0.0
    for t in range(16, _BLOCK):
        total += pf[t]
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
