"""The fused numba kernels of the learning step equal their torch references."""

from __future__ import annotations

import math

import pytest
import torch

from grapes_hw.grapes import _modulation_torch, modulation_factor
from grapes_hw.learning import _softmax_error_torch, softmax_error


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmax_error_kernel_matches_torch(dtype):
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(64, 10, generator=g) * 4).to(dtype)
    logits[5, 3] = logits[5, 7] = logits[5].max() + 1  # a tie: the first maximum counts
    y = torch.randint(0, 10, (64,), generator=g)
    y[5] = 3
    e, loss, correct = softmax_error(logits, y)
    e_ref, loss_ref, correct_ref = _softmax_error_torch(logits, y)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(e, e_ref, atol=tol, rtol=tol)
    assert loss == pytest.approx(loss_ref, rel=1e-5)
    assert correct == correct_ref
    assert e.sum(1).abs().max() < 1e-5  # softmax rows sum to 1, minus the one-hot


def test_softmax_error_kernel_nan_logits_give_nan_loss():
    logits = torch.zeros(4, 3)
    logits[2, 1] = float("nan")
    _, loss, _ = softmax_error(logits, torch.tensor([0, 1, 2, 0]))
    assert math.isnan(loss)


@pytest.mark.parametrize("lower, bits", [(1.0, None), (None, None), (1.0, 2), (None, 3),
                                         (0.7, 4), (1.0, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_modulation_kernel_matches_torch(lower, bits, dtype):
    g = torch.Generator().manual_seed(1)
    imp = (torch.rand(300, generator=g) * 5).to(dtype)
    m = modulation_factor(imp, lower, bits)
    ref = _modulation_torch(imp, lower, bits)
    torch.testing.assert_close(m, ref, atol=1e-6, rtol=1e-6)
    assert float(m.max()) == pytest.approx(2.0)
    if bits is not None:
        assert len(torch.unique(m)) <= 2 ** bits


@pytest.mark.parametrize("bad", [0.0, float("nan"), float("inf")])
def test_modulation_kernel_degenerate_importance_gives_ones(bad):
    imp = torch.zeros(5) if bad == 0.0 else torch.tensor([1.0, bad, 2.0, 0.5, 0.1])
    assert modulation_factor(imp).tolist() == [1.0] * 5
    assert _modulation_torch(imp).tolist() == [1.0] * 5
