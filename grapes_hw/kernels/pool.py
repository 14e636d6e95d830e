"""Numba kernels of the CNN's 2x2 max pooling (imported lazily, never at package import).

torch's ``max_pool2d(return_indices=True)`` costs several milliseconds per call on the 2-core
machine for a (64, 16, 28, 28) map, more than the convolution; these fuse what surrounds it:

* ``act_maxpool2``: activation (ReLU or tanh) and 2x2/2 max pooling in one pass, keeping the
  position of the maximum in each window (0..3, row-major; the first of equal values, as
  torch's kernel; NaN propagates). ReLU and tanh are monotone, so ``pool(f(a)) = f(pool(a))``.
* ``maxpool2_act_backward``: the gradient at the conv output from the gradient at the pooled
  output: routed to each window's maximum, times ``f'`` (from the pooled output: ReLU
  ``out > 0``, tanh ``1 - out^2``), times an optional per-channel factor (GRAPES' m); every
  other position (and a last row/column an odd size leaves out) gets 0.

Arrays are 4-D ``(B, C, H, W)`` with any strides (the patch path writes the error in
channels-last order). Compiled on first use and cached on disk (``cache=True``).
"""

from __future__ import annotations

import math

from numba import njit


@njit(cache=True)
def act_maxpool2(a, out, arg, relu):
    nb, nc, _, _ = a.shape
    h2, w2 = out.shape[2], out.shape[3]
    zero = a.dtype.type(0.0)
    for b in range(nb):
        for c in range(nc):
            for i in range(h2):
                r = 2 * i
                for j in range(w2):
                    s = 2 * j
                    m = a[b, c, r, s]
                    k = 0
                    v = a[b, c, r, s + 1]
                    if v > m or (v != v and m == m):
                        m = v
                        k = 1
                    v = a[b, c, r + 1, s]
                    if v > m or (v != v and m == m):
                        m = v
                        k = 2
                    v = a[b, c, r + 1, s + 1]
                    if v > m or (v != v and m == m):
                        m = v
                        k = 3
                    if relu:
                        if m < zero:
                            m = zero
                    else:
                        m = math.tanh(m)
                    out[b, c, i, j] = m
                    arg[b, c, i, j] = k


@njit(cache=True)
def maxpool2_act_backward(g, out, arg, scale, scaled, relu, d):
    nb, nc, h, w = d.shape
    h2, w2 = g.shape[2], g.shape[3]
    zero = d.dtype.type(0.0)
    one = d.dtype.type(1.0)
    for b in range(nb):
        for c in range(nc):
            mc = scale[c] if scaled else one
            for i in range(h2):
                r = 2 * i
                for j in range(w2):
                    s = 2 * j
                    o = out[b, c, i, j]
                    if relu:
                        v = g[b, c, i, j] * mc if o > zero else zero
                    else:
                        v = g[b, c, i, j] * (one - o * o) * mc
                    k = arg[b, c, i, j]
                    d[b, c, r, s] = v if k == 0 else zero
                    d[b, c, r, s + 1] = v if k == 1 else zero
                    d[b, c, r + 1, s] = v if k == 2 else zero
                    d[b, c, r + 1, s + 1] = v if k == 3 else zero
            for r in range(2 * h2, h):  # rows and columns the pooling left out
                for s in range(w):
                    d[b, c, r, s] = zero
            for r in range(2 * h2):
                for s in range(2 * w2, w):
                    d[b, c, r, s] = zero
