"""The numba step kernels (grapes_hw.kernels.step) against the torch code they replace."""

from __future__ import annotations

import pytest
import torch

from grapes_hw.backends.float_backend import FloatBackend, FloatParams
from grapes_hw.functional.loss import softmax_error
from grapes_hw.kernels import step as sk
from grapes_hw.models.mlp import HWLinear, Network

TOL = {torch.float32: 1e-6, torch.float64: 1e-12}


@pytest.fixture
def switch():
    old = sk.ENABLED
    yield
    sk.ENABLED = old


def close(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    """Equal within ``tol`` relative to the reference's largest magnitude, elementwise."""
    assert a.shape == b.shape and a.dtype == b.dtype
    scale = float(b.abs().max()) if b.numel() else 1.0
    err = float((a - b).abs().max()) if b.numel() else 0.0
    assert err <= tol * max(scale, 1e-30), (err, scale)


def both(fn):
    sk.ENABLED = True
    on = fn()
    sk.ENABLED = False
    off = fn()
    sk.ENABLED = True
    return on, off


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 10), (64, 10), (7, 3), (64, 1)])
def test_softmax_xent(switch, dtype, shape):
    g = torch.Generator().manual_seed(shape[0] * 100 + shape[1])
    logits = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype)
    y = torch.randint(0, shape[1], (shape[0],), generator=g)
    assert sk.softmax_error(logits, y) is not None  # the kernel takes it
    (e1, l1, c1), (e0, l0, c0) = both(lambda: softmax_error(logits.clone(), y))
    close(e1, e0, TOL[dtype])
    assert abs(l1 - l0) <= TOL[dtype] * max(abs(l0), 1e-30)
    assert c1 == c0
    ref = torch.nn.functional.cross_entropy(logits.double(), y, reduction="sum")
    assert abs(l1 - float(ref)) <= 10 * TOL[dtype] * float(ref)


def test_softmax_nan_and_fallback(switch):
    logits = torch.randn(4, 5)
    logits[1, 2] = float("nan")
    e, loss, _ = softmax_error(logits, torch.tensor([0, 1, 2, 3]))
    assert loss != loss  # NaN
    nc = torch.randn(10, 6).t()  # non-contiguous: torch code
    y = torch.randint(0, 10, (6,))
    assert sk.softmax_error(nc, y) is None
    (e1, l1, c1), (e0, l0, c0) = both(lambda: softmax_error(nc, y))
    assert torch.equal(e1, e0) and l1 == l0 and c1 == c0


def _net(act: str, dropout: float = 0.0) -> Network:
    layers = [HWLinear(FloatBackend((8, 8), FloatParams()))]
    return Network(layers, activation=act, dropout=dropout)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_act_grad_scale(switch, dtype, act, batch, scaled, dropout):
    net = _net(act, dropout)
    gen = torch.Generator().manual_seed(batch + 7 * scaled)
    n = 256
    a = torch.randn(batch, n, generator=gen, dtype=torch.float64).to(dtype)
    h = a.clamp(min=0) if act == "relu" else a.tanh()
    keep = None
    if dropout:
        keep = (torch.rand(batch, n, generator=gen) >= dropout).to(dtype)
        h = h * keep / (1.0 - dropout)
    g = torch.randn(batch, n, generator=gen, dtype=torch.float64).to(dtype)
    scale = (1 + torch.rand(n, generator=gen, dtype=torch.float64)).to(dtype) if scaled else None
    if keep is None:
        assert sk.activation_grad(g.clone(), h, act == "relu", scale) is not None
    on, off = both(lambda: net.activation_grad_(g.clone(), h, keep, scale))
    close(on, off, TOL[dtype])
    if act == "relu":
        assert torch.equal(on, off)


def test_act_grad_scale_fallbacks(switch):
    net = _net("relu")
    g = torch.randn(256, 64).t()  # non-contiguous
    h = torch.randn(64, 256).clamp(min=0)
    assert sk.activation_grad(g.clone(), h, True, None) is None
    on, off = both(lambda: net.activation_grad_(g.clone(), h, None, None))
    assert torch.equal(on, off)
    # float32 scale on a float64 error: converted first, then the kernel
    gd, hd = torch.randn(4, 256, dtype=torch.float64), torch.rand(4, 256, dtype=torch.float64)
    s = 1 + torch.rand(256)
    on, off = both(lambda: net.activation_grad_(gd.clone(), hd, None, s))
    close(on, off, TOL[torch.float64])
    assert sk.activation_grad(torch.randn(2, 3).half(), torch.randn(2, 3).half(), True,
                              None) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(256, 784), (256, 256), (10, 256), (3, 5), (1, 1), (6, 0)])
def test_row_abs_sums(switch, dtype, shape):
    b = FloatBackend(shape, FloatParams(dtype="float32" if dtype == torch.float32 else "float64"))
    b.w.copy_(torch.randn(shape, generator=torch.Generator().manual_seed(2),
                          dtype=torch.float64).to(dtype))
    assert sk.row_abs_sums(b.w) is not None
    for dim in (0, 1):
        on, off = both(lambda d=dim: b.abs_sums(d))
        close(on, off, TOL[dtype])
        close(on, b.w.double().abs().sum(dim).to(dtype), TOL[dtype])
    if not b.w.t().is_contiguous():
        assert sk.row_abs_sums(b.w.t()) is None


def test_switch_off_uses_torch(switch):
    sk.ENABLED = False
    assert sk.softmax_error(torch.randn(2, 3), torch.tensor([0, 1])) is None
    assert sk.activation_grad(torch.randn(2, 3), torch.rand(2, 3), True, None) is None
    assert sk.row_abs_sums(torch.randn(2, 3)) is None


@pytest.mark.parametrize("bad", [-1, 10])
def test_a_label_out_of_range_raises_not_reads_garbage(bad):
    logits = torch.randn(4, 10)
    y = torch.tensor([0, 3, bad, 9])
    with pytest.raises(IndexError):
        softmax_error(logits.contiguous(), y)
