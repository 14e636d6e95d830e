"""The output error of the softmax cross-entropy loss, as a pure function.
"""

from __future__ import annotations

import torch

from grapes_hw.kernels import step as _step_kernels


def softmax_error(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """Output error ``e = softmax(logits) - onehot(y)``, summed cross-entropy, #correct (the
    first maximal logit counts). NaN or Inf logits give a NaN loss (divergence detection).
    A contiguous CPU float batch goes through the numba ``softmax_xent``
    (``grapes_hw.kernels.step``) when its ``ENABLED`` is set."""
    fused = _step_kernels.softmax_error(logits, y)
    if fused is not None:
        return fused
    logp = torch.log_softmax(logits, dim=1)
    yy = y[:, None]
    loss = -float(logp.gather(1, yy).sum())
    correct = int((logits.argmax(1) == y).sum())
    e = logp.exp_()
    e.scatter_add_(1, yy, _neg_ones(y.shape[0], e.dtype))
    return e, loss, correct


_NEG_ONES: dict = {}


def _neg_ones(n: int, dtype: torch.dtype) -> torch.Tensor:
    t = _NEG_ONES.get((n, dtype))
    if t is None:
        t = _NEG_ONES[(n, dtype)] = torch.full((n, 1), -1.0, dtype=dtype)
    return t
