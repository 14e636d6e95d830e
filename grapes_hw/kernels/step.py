"""Three numba kernels of the float learning step, re-added together as one bundle
(removed one by one in c5e2903, each under 10%; together, in
``benchmarks/bench_step_kernels.py``, they make a GRAPES epoch 1.13-1.16x faster, an SGD
epoch 1.09x; see ``benchmarks/README.md``):

* ``softmax_xent``: ``e = softmax(logits) - onehot(y)``, summed cross-entropy and #correct in
  one pass (``functional.loss.softmax_error``);
* ``act_grad_scale``: in place ``g *= f'(a) (* m)`` from the layer's output ``h = f(a)``
  (ReLU: ``h > 0``; tanh: ``1 - h^2``) and the GRAPES factor ``m``
  (``models.mlp.Network.activation_grad_``, without dropout);
* ``row_abs_sums``: the L1 norm of every row of ``W`` (``FloatBackend.abs_sums(1)``).

``ENABLED`` switches all three at once (False: the plain torch code at every call site).
numba is imported and the kernels are compiled (or loaded from the on-disk cache,
``cache=True``) on the first call, never at import. Anything the kernels do not handle
(non-contiguous, not float32/float64, not CPU, autograd, a dropout keep mask, column sums,
empty batches) goes to the torch code; the wrappers return None there and the caller runs it.
"""

from __future__ import annotations

import numpy as np
import torch

ENABLED = True
"""Module-level switch for the whole bundle (read at every call)."""

_FLOATS = (torch.float32, torch.float64)
_K = None  # the compiled kernels, built on first use


# -- the kernels (plain Python here; njit'ed in _kernels()) ------------------------------------

def _softmax_xent(logits, y, e):
    """``e <- softmax(logits) - onehot(y)``; returns the summed cross-entropy (float64
    accumulation) and the number of rows whose first maximal logit is the label. No
    fastmath: NaN or Inf logits give a NaN loss, which is how a diverging run is detected."""
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
        if t < 0 or t >= k:
            raise IndexError("label out of range")
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


def _act_grad_scale(g, h, m, relu, scaled):
    """In place ``g[b, i] *= f'(a[b, i])``, then ``*= m[i]`` if ``scaled``, in the dtype of
    ``g`` and in the order of the torch code (so the results agree with it to rounding)."""
    nb, n = g.shape
    one = g.dtype.type(1.0)
    zero = g.dtype.type(0.0)
    for b in range(nb):
        for i in range(n):
            hv = h[b, i]
            if relu:
                d = one if hv > zero else zero
            else:
                d = one - hv * hv
            v = g[b, i] * d
            if scaled:
                v = v * m[i]
            g[b, i] = v


def _row_abs_sums(w, out):
    """``out[i] = sum_j |w[i, j]|``, accumulated in the weights' precision (SIMD under
    fastmath), four rows at a time (four streams keep more cache misses in flight)."""
    r1, m = w.shape
    zero = w.dtype.type(0.0)
    i = 0
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


class _Kernels:
    def __init__(self):
        import numba  # lazily: first call, never at package import

        self.softmax_xent = numba.njit(cache=True)(_softmax_xent)
        self.act_grad_scale = numba.njit(cache=True)(_act_grad_scale)
        self.row_abs_sums = numba.njit(cache=True, fastmath=True)(_row_abs_sums)
        self.dummy = {dt: np.ones(1, dtype=dt) for dt in (np.float32, np.float64)}


def _kernels() -> _Kernels:
    global _K
    if _K is None:
        _K = _Kernels()
    return _K


def _plain(t: torch.Tensor) -> bool:
    return (t.dtype in _FLOATS and t.device.type == "cpu" and t.is_contiguous()
            and not t.requires_grad)


# -- wrappers: None means "not handled, run the torch code" ------------------------------------

def softmax_error(logits: torch.Tensor, y: torch.Tensor):
    """``(e, loss, correct)`` by the kernel, or None."""
    if not (ENABLED and logits.dim() == 2 and _plain(logits) and logits.shape[0] > 0
            and logits.shape[1] > 0 and y.dtype == torch.int64 and y.dim() == 1
            and y.is_contiguous() and y.device.type == "cpu"
            and y.shape[0] == logits.shape[0]):
        return None
    e = torch.empty_like(logits)
    loss, correct = _kernels().softmax_xent(logits.numpy(), y.numpy(), e.numpy())
    return e, float(loss), int(correct)


def activation_grad(g: torch.Tensor, h: torch.Tensor, relu: bool,
                    scale: torch.Tensor | None) -> torch.Tensor | None:
    """In place ``g *= f'(a) (* scale)`` by the kernel (no dropout), or None."""
    if not (ENABLED and g.dim() == 2 and _plain(g) and h.dtype == g.dtype
            and h.shape == g.shape and _plain(h)):
        return None
    k = _kernels()
    if scale is None:
        m = k.dummy[np.float32 if g.dtype == torch.float32 else np.float64]
    else:
        if not (scale.dtype == g.dtype and scale.dim() == 1 and scale.shape[0] == g.shape[1]
                and _plain(scale)):
            return None
        m = scale.numpy()
    k.act_grad_scale(g.numpy(), h.numpy(), m, relu, scale is not None)
    return g


def row_abs_sums(w: torch.Tensor) -> torch.Tensor | None:
    """The L1 norms of the rows of a 2-D ``w`` by the kernel, or None."""
    if not (ENABLED and w.dim() == 2 and _plain(w)):
        return None
    out = torch.empty(w.shape[0], dtype=w.dtype)
    _kernels().row_abs_sums(w.numpy(), out.numpy())
    return out
