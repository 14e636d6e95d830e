"""Run a numba kernel on torch's own OpenMP thread pool (imported lazily, Linux only).

On a 2-core machine the GRAPES factors cost more in thread contention than in arithmetic:
numba's parallel backends start a second OpenMP (or TBB) pool, and its threads fight
torch's spinning OpenMP workers for the same cores (stalls of milliseconds were measured).
Instead, the kernel here is a numba ``cfunc`` handed to ``GOMP_parallel`` of the libgomp
that torch itself loaded, so it runs on torch's threads exactly like a torch operation.

The one kernel computes a layer's GRAPES factor ``m = clip(2 i / max(i), lower, 2)`` (held
on ``levels`` steps if asked) from the row L1 norms ``i`` of its weight matrix in a single
parallel region: every thread sums its share of rows, then after a barrier thread 0 forms
``m`` with the same ``_kernels.modulation`` the serial path uses. Each row is summed by one
thread with ``_kernels.row_abs_sums_range``, the routine of the serial path too, so the
result does not depend on the number of threads and equals the serial path's bit for bit.

The learner calls it right after a layer's forward MVM, while the weights are still in the
caches. Measured on the 2-core machine: the three hidden layers of 784-256-256-256 cost about
40 us per minibatch this way, against about 100 us for separate serial passes; with the
matrices fully in cache the same pass takes 7 us for the 256 x 784 layer.

The same pool runs the fixed-point write (``backends/_fixed_kernels``), which also finds
here the MKL ``sgemm_`` that torch's CPU library exports (``_sgemm_address``): each thread
computes its rows of the update's product and writes them while they are in its cache.

``available()`` is False when torch's libgomp cannot be found (other platforms, torch built
with another OpenMP) or ``GRAPES_HW_TORCH_POOL=0``; callers then use the serial kernels.
"""

from __future__ import annotations

import ctypes
import functools
import os

import numpy as np
import torch
from numba import carray, cfunc, njit, types

from ._kernels import modulation, row_abs_sums_range
from ._ptr import _call_int, _call_void, _f32_ptr, _gomp_parallel, _i64_ptr

_HEADER = 12  # int64 slots of the argument block (layout above _row_modulation_body)


# The argument block (int64 slots): omp_get_thread_num, omp_get_num_threads, GOMP_barrier,
# has_lower, levels, lower (float64 bits), w, rows, cols, imp, m (0: not written), unused.
# Not fastmath: numba lets a callee that does not set fastmath inherit the caller's, and a
# fastmath cfunc once compiled ``modulation`` without its NaN checks and wrote that build
# into modulation's on-disk cache (see the tests). The row sums set fastmath themselves.
@cfunc(types.void(types.voidptr), cache=True)
def _row_modulation_body(data):
    p = carray(data, _HEADER, dtype=np.int64)
    tid = _call_int(p[0])
    nth = _call_int(p[1])
    n = p[7]
    imp = carray(_f32_ptr(p[9]), n)
    row_abs_sums_range(carray(_f32_ptr(p[6]), (n, p[8])), imp, n * tid // nth,
                       n * (tid + 1) // nth)
    _call_void(p[2])  # every row sum is in before the max is taken
    if tid == 0 and p[10] != 0:
        lower = carray(data, _HEADER, dtype=np.float64)[5]
        modulation(imp, carray(_f32_ptr(p[10]), n), lower, p[3] != 0, p[4])


@njit(cache=True)
def _launch(gomp_parallel, fn, block, w, cols, m, n_threads):
    """Fill the block's per-call slots, run ``fn`` on the pool, clear the pointers."""
    p = carray(_i64_ptr(block), _HEADER)
    p[6] = w
    p[8] = cols
    p[10] = m
    _gomp_parallel(gomp_parallel, fn, block, n_threads)
    p[6] = 0  # no pointer outlives the call
    p[10] = 0


class _Pool:
    def __init__(self, lib: ctypes.CDLL):
        self.parallel = ctypes.cast(lib.GOMP_parallel, ctypes.c_void_p).value
        self.addr = [ctypes.cast(getattr(lib, f), ctypes.c_void_p).value
                     for f in ("omp_get_thread_num", "omp_get_num_threads", "GOMP_barrier")]


def _torch_libgomp() -> str | None:
    """Path of the libgomp mapped into this process from torch's own directory."""
    torch_dir = os.path.dirname(os.path.realpath(torch.__file__))
    root = os.path.dirname(torch_dir)
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "libgomp" in line}
    except OSError:
        return None
    for p in sorted(paths):
        if p.startswith(root) and ("/torch/" in p or "/torch.libs/" in p):
            return p
    return None


def _torch_sgemm() -> int | None:
    """Address of the MKL ``sgemm_`` that torch's CPU library exports, or None (torch
    without MKL, or another platform)."""
    try:
        if not torch.backends.mkl.is_available():
            return None
        lib = ctypes.CDLL(os.path.join(os.path.dirname(os.path.realpath(torch.__file__)),
                                       "lib", "libtorch_cpu.so"))
        return ctypes.cast(lib.sgemm_, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None


@functools.lru_cache(maxsize=1)
def _sgemm_address() -> int | None:
    return _torch_sgemm() if _pool() is not None else None


@functools.lru_cache(maxsize=1)
def _pool() -> _Pool | None:
    if os.environ.get("GRAPES_HW_TORCH_POOL", "1") == "0":
        return None
    path = _torch_libgomp()
    if path is None:
        return None
    try:
        return _Pool(ctypes.CDLL(path))
    except (OSError, AttributeError):
        return None


def available() -> bool:
    return _pool() is not None


class RowModulation:
    """GRAPES factors of one layer's float32 weight matrix with ``n_rows`` rows.

    Each call reads the matrix it is given and returns a new factor tensor; the row L1
    norms of the last call stay in ``importance``. One object serves one thread at a time.
    """

    def __init__(self, n_rows: int, lower: float | None, levels: int):
        pool = _pool()
        if pool is None:
            raise RuntimeError("torch's OpenMP pool is not available (see _omp.available)")
        self._gomp_parallel = pool.parallel
        self.n_rows = int(n_rows)
        self.importance = torch.zeros(self.n_rows, dtype=torch.float32)
        blk = np.zeros(_HEADER, dtype=np.int64)
        blk[0:3] = pool.addr
        blk[3] = lower is not None
        blk[4] = int(levels)
        blk.view(np.float64)[5] = 0.0 if lower is None else float(lower)
        blk[7] = self.n_rows
        blk[9] = self.importance.data_ptr()
        self._blk = blk
        self._ptr = blk.ctypes.data
        self._fn = _row_modulation_body.address

    def accepts(self, w: torch.Tensor) -> bool:
        """Whether ``w`` is a matrix this object can read: contiguous float32 on the CPU,
        with ``n_rows`` rows."""
        return (w.dtype is torch.float32 and w.dim() == 2 and w.shape[0] == self.n_rows
                and w.is_contiguous() and w.device.type == "cpu")

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        """``m`` for ``w``; ``ValueError`` unless ``accepts(w)``."""
        if not self.accepts(w):
            raise ValueError(f"RowModulation: expected a contiguous float32 CPU matrix with "
                             f"{self.n_rows} rows, got {tuple(w.shape)} {w.dtype} {w.device}")
        return self.run(w)

    def run(self, w: torch.Tensor) -> torch.Tensor:
        """``__call__`` without the check (the caller has checked ``accepts(w)``)."""
        m = torch.empty(self.n_rows, dtype=torch.float32)
        _launch(self._gomp_parallel, self._fn, self._ptr, w.data_ptr(), w.shape[1],
                m.data_ptr(), torch.get_num_threads())
        return m
