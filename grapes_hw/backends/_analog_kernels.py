"""Numba kernels of the analog backend's bookkeeping (imported lazily, like ``_kernels``).

* ``abs_diff_sum``: ``sum |a - b|`` in one pass without temporaries (the write-pulse
  estimate compares the stored weights before and after every write).
"""

from __future__ import annotations

from numba import njit


@njit(cache=True, fastmath=True)
def abs_diff_sum(a, b):
    n, m = a.shape
    s = 0.0
    for i in range(n):
        for j in range(m):
            s += abs(a[i, j] - b[i, j])
    return s
