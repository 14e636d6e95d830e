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
def row_abs_sums_range(w, out, r0, r1):
    """``out[i] = sum_j |w[i, j]|`` for rows r0..r1-1, accumulated in the weights' precision
    (SIMD-friendly), four rows at a time: four streams keep more cache misses in flight when
    the weights come from L3 (20-25% faster there). The one row-sum routine: the serial path
    and the per-thread blocks on torch's pool (``_omp``) give the same values bit for bit."""
    m = w.shape[1]
    zero = w.dtype.type(0.0)
    i = r0
    while i + 4 <= r1:
        s0 = zero
        s1 = zero
        s2 = zero
        s3 = zero
        for j in range(m):
            s0 += abs(w[i, j])
            s1 += abs(w[i + 1, j])
            s2 += abs(w[i + 2, j])
            s3 += abs(w[i + 3, j])
        out[i] = s0
        out[i + 1] = s1
        out[i + 2] = s2
        out[i + 3] = s3
        i += 4
    for r in range(i, r1):
        s = zero
        for j in range(m):
            s += abs(w[r, j])
        out[r] = s


@njit(cache=True)
def row_abs_sums(w, out):
    row_abs_sums_range(w, out, 0, w.shape[0])


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


@njit(cache=True, fastmath=True)
def scale_columns(g, m):
    """In place ``g[b, i] *= m[i]`` (local GRAPES: the update's error, after propagation)."""
    nb, n = g.shape
    for b in range(nb):
        for i in range(n):
            g[b, i] *= m[i]


def ones(n: int, dtype) -> np.ndarray:
    return np.ones(n, dtype=dtype)


@njit(cache=True)
def softmax_xent(logits, y, e):
    """``e <- softmax(logits) - onehot(y)`` (``e`` may be ``logits`` itself); returns the
    summed cross-entropy (float64 accumulation) and the number of rows whose first maximal
    logit is the label. No fastmath: NaN or Inf logits give a NaN loss, which is how a
    diverging run is detected."""
    nb, k = logits.shape
    loss = 0.0
    correct = 0
    for b in range(nb):
        mx = logits[b, 0]
        am = 0
        for c in range(1, k):
            if logits[b, c] > mx:
                mx = logits[b, c]
                am = c
        t = y[b]
        zt = logits[b, t] - mx
        s = 0.0
        for c in range(k):
            v = np.exp(logits[b, c] - mx)
            e[b, c] = v
            s += v
        inv = 1.0 / s
        for c in range(k):
            e[b, c] *= inv
        e[b, t] -= 1.0
        loss += np.log(s) - zt
        correct += am == t
    return loss, correct


@njit(cache=True)
def modulation(imp, out, lower, has_lower, levels):
    """GRAPES' ``m = clip(2 i / max(i), lower, 2)`` into ``out``, held on ``levels + 1``
    evenly spaced values of [lo, 2] when ``levels > 0`` (lo = ``lower``, or min m when
    unbounded). All-zero or non-finite importance gives m = 1 everywhere. The arithmetic is
    in the dtype of ``imp`` with the constants rounded to it, like the torch reference
    ``grapes.modulation_factor``."""
    n = imp.shape[0]
    if n == 0:
        return
    one = imp.dtype.type(1.0)
    top = imp[0]
    bad = False
    for i in range(n):
        v = imp[i]
        if not np.isfinite(v):
            bad = True
        elif v > top:
            top = v
    if bad or not np.isfinite(top) or top <= 0:
        for i in range(n):
            out[i] = one
        return
    scale = imp.dtype.type(2.0 / top)
    two = imp.dtype.type(2.0)
    lo_b = imp.dtype.type(lower)
    mn = two
    for i in range(n):
        m = imp[i] * scale
        if has_lower and m < lo_b:
            m = lo_b
        if m > two:
            m = two
        out[i] = m
        if m < mn:
            mn = m
    if levels > 0:
        lo = lower if has_lower else float(mn)
        if lo < 2.0:
            step = (2.0 - lo) / levels
            s32 = imp.dtype.type(step)
            l32 = imp.dtype.type(lo)
            for i in range(n):
                out[i] = np.rint((out[i] - l32) / s32) * s32 + l32
