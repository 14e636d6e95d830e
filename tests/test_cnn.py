"""Convolutional networks on weight backends (grapes_hw.models.cnn): HWConv2d against torch's conv2d
and autograd, CNN trajectories against torch.optim, GRAPES per filter, fixed point, analog
tiles, the CLI, the config checks and the study's quick variant."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from grapes_hw.backends.fixed_point import FixedParams, FixedPointBackend
from grapes_hw.backends.float_backend import FloatBackend, FloatParams
from grapes_hw.cli.main import main
from grapes_hw.errors import ConfigError
from grapes_hw.functional.grapes import GrapesParameters
from grapes_hw.models.cnn import ConvNet, Pool2d, parse_conv
from grapes_hw.models.conv import HWConv2d, exact_mvm
from grapes_hw.models.mlp import HWLinear
from grapes_hw.rules.cnn import CNNLearner
from grapes_hw.rules.optim import SGD, make_optimizer
from grapes_hw.training.config import TrainConfig
from grapes_hw.training.train import build_cnn, run

ROOT = Path(__file__).resolve().parent.parent
needs_aihwkit = pytest.mark.skipif(importlib.util.find_spec("aihwkit") is None,
                                   reason="aihwkit is not installed")


def float_backend(w: torch.Tensor) -> FloatBackend:
    b = FloatBackend(tuple(w.shape), FloatParams("float64" if w.dtype == torch.float64
                                                 else "float32"))
    b.program(w)
    return b


class SpyBackend(FloatBackend):
    """A float backend that records the shapes its MVMs and updates see (a subclass, so
    HWConv2d takes the patch path)."""

    def __init__(self, shape, params):
        super().__init__(shape, params)
        self.calls: list[tuple[str, tuple]] = []

    def forward(self, x):
        self.calls.append(("forward", tuple(x.shape)))
        return super().forward(x)

    def backward(self, delta):
        self.calls.append(("backward", tuple(delta.shape)))
        return super().backward(delta)

    def update(self, x, delta, lr):
        self.calls.append(("update", tuple(x.shape)))
        super().update(x, delta, lr)


# ---- HWConv2d against torch ----------------------------------------------------------------
CASES = [  # stride, padding, bias
    (1, 0, False), (1, 1, True), (2, 1, True), (2, 0, False), ((2, 1), (0, 2), True),
]


@pytest.mark.parametrize("exact", [True, False], ids=["torch-kernels", "patches"])
@pytest.mark.parametrize("stride,padding,bias", CASES)
def test_conv_forward_and_gradients_equal_torch_autograd(exact, stride, padding, bias):
    g = torch.Generator().manual_seed(1)
    c_in, c_out, k = 3, 5, (3, 2)
    w = torch.randn(c_out, c_in * k[0] * k[1], generator=g, dtype=torch.float64)
    conv = HWConv2d(float_backend(w), c_in, k, stride, padding, bias=bias, exact=exact)
    assert conv.exact is exact
    if bias:
        conv.bias.program(torch.randn(c_out, 1, generator=g, dtype=torch.float64))
    x = torch.randn(4, c_in, 9, 8, generator=g, dtype=torch.float64)

    xt = x.clone().requires_grad_(True)
    wt = w.clone().reshape(c_out, c_in, *k).requires_grad_(True)
    bt = conv.bias.w[:, 0].clone().requires_grad_(True) if bias else None
    ref = F.conv2d(xt, wt, bt, stride, padding)
    a, ctx = conv.forward_train(x)
    assert a.shape == ref.shape
    torch.testing.assert_close(a, ref.detach(), rtol=0, atol=1e-12)

    # delta: the per-sample error at the output; the loss is the minibatch mean
    delta = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ((ref * delta).sum() / x.shape[0]).backward()
    torch.testing.assert_close(conv.input_grad(delta, ctx), xt.grad * x.shape[0],
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(conv.weight_gradient(delta, ctx),
                               wt.grad.reshape(c_out, -1), rtol=0, atol=1e-12)
    if bias:
        xb, db = conv.bias_pair(delta)
        torch.testing.assert_close((db.T @ xb)[:, 0] / xb.shape[0], bt.grad, rtol=0, atol=1e-12)

    # the SGD step is W - lr * (autograd gradient of the mean loss)
    w0 = conv.backend.read().clone()
    conv.step(SGD(), 0, delta, ctx, 0.3)
    torch.testing.assert_close(conv.backend.read(), w0 - 0.3 * wt.grad.reshape(c_out, -1),
                               rtol=0, atol=1e-12)
    if bias:
        torch.testing.assert_close(conv.bias.w[:, 0], bt.detach() - 0.3 * bt.grad,
                                   rtol=0, atol=1e-12)


def test_patch_path_is_one_mvm_per_patch_and_one_rank_update():
    g = torch.Generator().manual_seed(2)
    b = SpyBackend((4, 2 * 9), FloatParams("float64"))
    b.program(torch.randn(4, 18, generator=g, dtype=torch.float64))
    conv = HWConv2d(b, 2, 3, 1, 1)
    assert not conv.exact and not exact_mvm(b)
    x = torch.randn(3, 2, 6, 5, generator=g, dtype=torch.float64)
    a, ctx = conv.forward_train(x)
    d = torch.randn(a.shape, generator=g, dtype=torch.float64)
    conv.input_grad(d, ctx)
    conv.step(SGD(), 0, d, ctx, 0.1)
    n = 3 * 6 * 5  # B * L patches
    assert b.calls == [("forward", (n, 18)), ("backward", (n, 4)), ("update", (n, 18))]


def test_exact_mvm_selects_the_backends_whose_mvm_is_a_plain_product():
    from grapes_hw.backends.noise import NoiseParams, wrap_with_noise

    f = FloatBackend((2, 3))
    assert exact_mvm(f)
    assert exact_mvm(FixedPointBackend((2, 3), FixedParams(bits=8)))
    assert not exact_mvm(FixedPointBackend((2, 3), FixedParams(bits=8, dac_bits=6)))
    assert exact_mvm(wrap_with_noise(FloatBackend((2, 3)), NoiseParams(write_sigma=0.1)))
    assert not exact_mvm(wrap_with_noise(FloatBackend((2, 3)), NoiseParams(read_sigma=0.1)))


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("kind", ["max", "avg", "none"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pooling_equals_torch_autograd(activation, kind, channels_last):
    g = torch.Generator().manual_seed(4)
    a = torch.randn(3, 4, 7, 6, generator=g, dtype=torch.float64)  # odd H: a row is left out
    if channels_last:
        a = a.contiguous(memory_format=torch.channels_last)
    at = a.clone().requires_grad_(True)
    h = torch.relu(at) if activation == "relu" else torch.tanh(at)
    ref = {"max": lambda t: F.max_pool2d(t, 2, 2), "avg": lambda t: F.avg_pool2d(t, 2, 2),
           "none": lambda t: t}[kind](h)
    scale = torch.tensor([1.0, 2.0, 1.5, 1.25], dtype=torch.float64)
    gout = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    (ref * gout).sum().backward()
    want = at.grad * scale.view(1, -1, 1, 1)
    for fused in (True, False):
        pool = Pool2d(kind, activation, fused=fused)
        out, ctx = pool.forward(a.clone())
        torch.testing.assert_close(out, ref.detach(), rtol=0, atol=1e-14)
        d = pool.backward(gout, ctx, scale, channels_last=channels_last)
        torch.testing.assert_close(d, want, rtol=0, atol=1e-14)
        if channels_last:  # rows (B*H*W, C) are a view
            assert d.permute(0, 2, 3, 1).is_contiguous()


def test_max_pool_kernel_propagates_nan():
    a = torch.zeros(1, 1, 2, 2)
    a[0, 0, 1, 0] = float("nan")
    out, _ = Pool2d("max", "relu").forward(a)
    assert torch.isnan(out).all()


# ---- a CNN against the same torch model ------------------------------------------------------
def _tiny_cnn(dtype, bias: bool, exact: bool, seed: int = 0):
    """conv 3:3 (same) -> relu -> maxpool -> conv 4:3 (stride 1, same) -> relu -> avgpool
    -> flatten -> 6 -> 10 on 8x8 images; returns (ConvNet, weights, biases)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 9), (4, 27), (6, 16), (10, 6)]
    ws = [torch.randn(s, generator=g, dtype=dtype) * (2.0 / s[1]) ** 0.5 for s in shapes]
    convs = [HWConv2d(float_backend(ws[0]), 1, 3, 1, 1, bias=bias, exact=exact),
             HWConv2d(float_backend(ws[1]), 3, 3, 1, 1, bias=bias, exact=exact)]
    head = []
    for w in ws[2:]:
        layer = HWLinear(float_backend(w), bias=False)
        head.append(layer)
    net = ConvNet(convs, [Pool2d("max"), Pool2d("avg")], head, (1, 8, 8))
    bs = []
    if bias:
        for c in convs:
            c.bias.program(torch.randn(c.out_channels, 1, generator=g, dtype=dtype) * 0.1)
            bs.append(c.bias.w[:, 0].clone())
    return net, [w.clone() for w in ws], bs


def _torch_forward(ws, bs, x):
    h = x.reshape(-1, 1, 8, 8)
    h = F.max_pool2d(F.relu(F.conv2d(h, ws[0].view(3, 1, 3, 3), bs[0] if bs else None,
                                     padding=1)), 2)
    h = F.avg_pool2d(F.relu(F.conv2d(h, ws[1].view(4, 3, 3, 3), bs[1] if bs else None,
                                     padding=1)), 2)
    h = F.relu(h.flatten(1) @ ws[2].T)
    return h @ ws[3].T


def _digits(n: int, dtype):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data[:n] / 16.0, dtype=dtype)
    y = torch.tensor(d.target[:n], dtype=torch.int64)
    return x, y


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("exact", [True, False], ids=["torch-kernels", "patches"])
def test_cnn_follows_torch_trajectory_float64(optimizer, exact):
    net, ws, _ = _tiny_cnn(torch.float64, bias=False, exact=exact)
    params = [w.clone().requires_grad_(True) for w in ws]
    lr = {"sgd": 0.1, "momentum": 0.05, "adam": 0.01}[optimizer]
    opt_t = {"sgd": lambda: torch.optim.SGD(params, lr=lr),
             "momentum": lambda: torch.optim.SGD(params, lr=lr, momentum=0.9),
             "adam": lambda: torch.optim.Adam(params, lr=lr)}[optimizer]()
    learner = CNNLearner(net, GrapesParameters(), make_optimizer(optimizer, 0.9))
    x, y = _digits(5 * 32, torch.float64)
    for s in range(5):
        xb, yb = x[s * 32:(s + 1) * 32], y[s * 32:(s + 1) * 32]
        opt_t.zero_grad()
        loss_t = F.cross_entropy(_torch_forward(params, None, xb), yb)
        loss_t.backward()
        opt_t.step()
        loss, _ = learner.step(xb, yb, lr)
        assert loss / 32 == pytest.approx(float(loss_t.detach()), rel=1e-10)
        for layer, p in zip(net.layers, params, strict=True):
            torch.testing.assert_close(layer.backend.read(), p.detach(), rtol=0, atol=1e-10)
    assert any((layer.backend.read() - w).abs().max() > 1e-3
               for layer, w in zip(net.layers, ws, strict=True))  # it did move


def test_cnn_with_bias_follows_torch_trajectory_float32():
    net, ws, bs = _tiny_cnn(torch.float32, bias=True, exact=True, seed=3)
    params = [w.clone().requires_grad_(True) for w in ws]
    biases = [b.clone().requires_grad_(True) for b in bs]
    opt_t = torch.optim.SGD(params + biases, lr=0.1)
    learner = CNNLearner(net, GrapesParameters(), SGD())
    x, y = _digits(4 * 64, torch.float32)
    for s in range(4):
        xb, yb = x[s * 64:(s + 1) * 64], y[s * 64:(s + 1) * 64]
        opt_t.zero_grad()
        F.cross_entropy(_torch_forward(params, biases, xb), yb).backward()
        opt_t.step()
        learner.step(xb, yb, 0.1)
    for layer, p in zip(net.layers, params, strict=True):
        torch.testing.assert_close(layer.backend.read(), p.detach(), rtol=1e-4, atol=1e-5)
    for conv, b in zip(net.convs, biases, strict=True):
        torch.testing.assert_close(conv.bias.w[:, 0], b.detach(), rtol=1e-4, atol=1e-5)


# ---- GRAPES per filter --------------------------------------------------------------------------
def _grapes_net(exact: bool):
    """conv1 with a hand-made filter bank (L1 norms 8, 5, 3.9, 2), conv2 and the dense
    hidden layer with equal-norm rows (m = 2 everywhere), output layer."""
    g = torch.Generator().manual_seed(5)
    signs = lambda shape: torch.randint(0, 2, shape, generator=g).double() * 2 - 1  # noqa: E731
    norms = torch.tensor([8.0, 5.0, 3.9, 2.0], dtype=torch.float64)
    w1 = signs((4, 9)) * (norms / 9).view(-1, 1)  # L1 norm of row n = norms[n]
    # binary fractions: equal row norms stay exactly equal whatever order a CPU's reduction
    # sums in (with 0.3, one row's sum came out 1 ulp off on some machines: m = 1.9999...)
    w2 = signs((3, 36)) * 0.25
    w3 = signs((5, 12)) * 0.375
    w4 = torch.randn(10, 5, generator=g, dtype=torch.float64)
    convs = [HWConv2d(float_backend(w1), 1, 3, 1, 1, exact=exact),
             HWConv2d(float_backend(w2), 4, 3, 1, 1, exact=exact)]
    head = [HWLinear(float_backend(w3)), HWLinear(float_backend(w4))]
    return ConvNet(convs, [Pool2d("max"), Pool2d("max")], head, (1, 8, 8))


@pytest.mark.parametrize("exact", [True, False], ids=["torch-kernels", "patches"])
def test_grapes_filter_factors_scale_every_position_and_compound(exact):
    x, y = _digits(16, torch.float64)
    errs, factors = {}, None
    for mode in ("off", "propagating", "local"):
        net = _grapes_net(exact)
        learner = CNNLearner(net, GrapesParameters(mode=mode), SGD())
        logits = net.forward(x, train=True, cache=learner.cache)
        from grapes_hw.functional.loss import softmax_error

        e, _, _ = softmax_error(logits, y)
        m = learner.factors()
        errs[mode] = learner.errors(e, m)
        if mode == "propagating":
            factors = m
    # the largest-L1 filter gets 2, those under half the maximum 1; m = 2 i / max i between
    torch.testing.assert_close(factors[0], torch.tensor([2.0, 1.25, 1.0, 1.0],
                                                        dtype=torch.float64))
    assert torch.equal(factors[1], torch.full((3,), 2.0, dtype=torch.float64))
    assert torch.equal(factors[2], torch.full((5,), 2.0, dtype=torch.float64))
    off, prop, loc = errs["off"], errs["propagating"], errs["local"]
    assert torch.equal(prop[3], off[3]) and torch.equal(loc[3], off[3])  # output: unmodulated
    m1 = factors[0].view(1, -1, 1, 1)
    # propagating: 2 (dense hidden), 2 * 2 (conv2), m1 * 2 * 2 (conv1), at every position
    torch.testing.assert_close(prop[2], 2 * off[2], rtol=1e-12, atol=0)
    torch.testing.assert_close(prop[1], 4 * off[1], rtol=1e-12, atol=0)
    torch.testing.assert_close(prop[0], 4 * m1 * off[0], rtol=1e-12, atol=0)
    # local: each layer's own factor only
    torch.testing.assert_close(loc[2], 2 * off[2], rtol=1e-12, atol=0)
    torch.testing.assert_close(loc[1], 2 * off[1], rtol=1e-12, atol=0)
    torch.testing.assert_close(loc[0], m1 * off[0], rtol=1e-12, atol=0)
    assert (off[0] != 0).sum() > 0.05 * off[0].numel()  # real errors (max pool: <= 1 in 4)


@pytest.mark.parametrize("mode", ["propagating", "local"])
def test_grapes_cnn_step_equals_torch_with_modulated_gradients(mode):
    """The weights after GRAPES steps equal torch autograd with m applied by hand: per
    channel to the gradient at each hidden layer's pre-activation (propagating) or to the
    rows of each hidden layer's weight gradient (local)."""
    net, ws, _ = _tiny_cnn(torch.float64, bias=False, exact=True, seed=7)
    params = [w.clone().requires_grad_(True) for w in ws]
    learner = CNNLearner(net, GrapesParameters(mode=mode), SGD())
    x, y = _digits(3 * 32, torch.float64)
    for s in range(3):
        xb, yb = x[s * 32:(s + 1) * 32], y[s * 32:(s + 1) * 32]
        ms = [torch.clamp(2 * p.detach().abs().sum(1) / p.detach().abs().sum(1).max(), 1, 2)
              for p in params[:3]]

        def pre(i, a, ms=ms):
            if mode == "propagating":  # m on the gradient at the pre-activation
                shape = (1, -1, 1, 1) if a.dim() == 4 else (1, -1)
                a.register_hook(lambda g: g * ms[i].view(shape))
            return a

        h = xb.reshape(-1, 1, 8, 8)
        h = F.max_pool2d(F.relu(pre(0, F.conv2d(h, params[0].view(3, 1, 3, 3), padding=1))), 2)
        h = F.avg_pool2d(F.relu(pre(1, F.conv2d(h, params[1].view(4, 3, 3, 3), padding=1))), 2)
        h = F.relu(pre(2, h.flatten(1) @ params[2].T))
        F.cross_entropy(h @ params[3].T, yb).backward()
        with torch.no_grad():
            for i, p in enumerate(params):
                gr = p.grad * ms[i].view(-1, 1) if (mode == "local" and i < 3) else p.grad
                p -= 0.1 * gr
                p.grad = None
        learner.step(xb, yb, 0.1)
        for layer, p in zip(net.layers, params, strict=True):
            torch.testing.assert_close(layer.backend.read(), p.detach(), rtol=0, atol=1e-10)
    assert learner.stats.pop()[0]["m_max"] > 1.0


# ---- fixed point and analog tiles ----------------------------------------------------------------
@pytest.mark.parametrize("dac", [None, 6], ids=["torch-kernels", "patches-dac6"])
def test_fixed_point_conv_update_rounds_and_saturates(dac):
    g = torch.Generator().manual_seed(8)
    params = FixedParams(bits=4, w_max=0.7, rounding="nearest", dac_bits=dac)
    b = FixedPointBackend((4, 2 * 9), params)
    b.program(torch.rand(4, 18, generator=g) * 1.2 - 0.6)
    conv = HWConv2d(b, 2, 3, 1, 1)
    assert conv.exact is (dac is None)
    x = torch.rand(5, 2, 6, 6, generator=g)
    a, ctx = conv.forward_train(x)
    delta = torch.randn(a.shape, generator=g)
    q0 = b.q.clone()
    # the exact step in units of one LSB, from torch's conv on the stored weights (float64)
    xt = (x.double() if dac is None else _dac_patches(conv, x, dac)).requires_grad_(False)
    grad = _conv_weight_grad(conv, xt, delta.double(), dac)
    lr = 0.8
    want = torch.clamp(torch.round(q0.double() - lr * grad / b.step), -b.qmax, b.qmax)
    conv.step(SGD(), 0, delta, ctx, lr)
    assert b.q.dtype == torch.int8
    assert torch.equal(b.w, b.q.float() * np.float32(b.step))  # the shadow is the integers
    close = (b.q.double() - want).abs()
    assert (close <= 1).all() and (close == 0).float().mean() > 0.95  # float32 vs float64 ties
    assert (b.q.abs() == b.qmax).any()  # saturated cells
    assert (want.abs() == b.qmax).sum() > (q0.abs() == b.qmax).sum()  # ... by this update
    assert b.pulses() == int((b.q != q0).sum())


def _dac_patches(conv, x, bits):
    from grapes_hw.backends.fixed_point import quantize_symmetric

    return quantize_symmetric(conv.patches(x).double(), bits)


def _conv_weight_grad(conv, x, delta, dac):
    """Mean weight gradient delta^T P / B in float64 (P: the patches the array sees)."""
    B = delta.shape[0]
    if dac is None:
        w = conv.backend.read().double().reshape(conv.out_channels, conv.in_channels, 3, 3)
        wt = w.clone().requires_grad_(True)
        (F.conv2d(x, wt, None, conv.stride, conv.padding) * delta).sum().backward()
        return wt.grad.reshape(conv.shape) / B
    return HWConv2d.rows(delta).T @ x / B


@needs_aihwkit
def test_cnn_on_an_analog_tile_learns_digits():
    cfg = TrainConfig.from_flat(model="cnn", conv="8:3,16:3", layers=(32,),
                                backend="idealized-insitu",
                      epochs=4, lr=0.1, train_subset=1280, download=False)
    r = run(cfg)
    assert r["status"] == "ok"
    assert r["best_test_acc"] > 0.5  # chance: 0.1 (measured 0.73)
    assert r["config"]["cnn"]["exact_conv_kernels"] is False  # the tile's own MVMs
    assert r["pulses_total"] > 0 and r["memory"]["device_count"] > 0
    assert all(layer["pulses"] > 0 for layer in r["epochs"][0]["layers"])


# ---- the model in runs, the CLI and sweeps ------------------------------------------------------
def _run_small(**kw):
    base = dict(model="cnn", conv="8:3,16:3", layers=(32,), epochs=4, lr=0.1,
                train_subset=1280, download=False)
    return run(TrainConfig.from_flat(**{**base, **kw}))


def test_float_cnn_learns_digits_and_records_the_architecture():
    r = _run_small()
    assert r["status"] == "ok" and r["best_test_acc"] > 0.6  # measured 0.73
    c = r["config"]
    assert c["model"] == "cnn" and c["conv"] == "8:3,16:3"
    assert c["cnn"]["feature_maps"] == [[8, 4, 4], [16, 2, 2]]
    assert c["cnn"]["dense_in"] == 64 and c["cnn"]["padding"] == "same"
    assert r["memory"]["n_weights"] == 8 * 9 + 16 * 72 + 32 * 64 + 10 * 32
    assert len(r["epochs"][0]["layers"]) == 4


@pytest.mark.parametrize("kw", [
    dict(optimizer="nag", lr=0.01), dict(optimizer="rmsprop", lr=0.001),
    dict(grapes="propagating", bias=True), dict(grapes="local", activation="tanh"),
    dict(credit="fa", grapes="propagating", conv="8:3"), dict(lr_matched=True),
    dict(backend="fixed6", grapes="propagating"), dict(backend="float32-read5"),
    dict(conv="6:3:avg,8:3:none"),
])
def test_cnn_runs_with_every_rule(kw):
    r = _run_small(**kw)
    assert r["status"] == "ok"
    assert r["best_test_acc"] > 0.3, (kw, [e["test_acc"] for e in r["epochs"]])
    if kw.get("grapes", "off") != "off":
        assert r["epochs"][-1]["layers"][0]["m_max"] > 1.0


def test_fa_sends_errors_through_the_fixed_feedback_kernel():
    net, _, _ = _tiny_cnn(torch.float64, bias=False, exact=True, seed=9)
    learner = CNNLearner(net, GrapesParameters(), SGD(), credit="fa")
    fb = learner.feedback[1].double()
    x, _ = _digits(8, torch.float64)
    net.forward(x, train=True, cache=learner.cache)
    ctx = learner.cache.conv[1]
    a = F.conv2d(ctx.x, net.convs[1].kernel(torch.float64), padding=1)
    d = torch.randn(a.shape, dtype=torch.float64)
    xt = ctx.x.clone().requires_grad_(True)
    (F.conv2d(xt, fb.view(4, 3, 3, 3), padding=1) * d).sum().backward()
    torch.testing.assert_close(learner._send_down(1, d), xt.grad, rtol=0, atol=1e-12)
    assert learner.state_bytes() > 0


def test_config_errors_name_the_field():
    field = lambda e: e.value.field.lstrip("-")  # noqa: E731 - 'conv' (TrainConfig) or '--conv'
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_flat(conv="8:3").check()
    assert field(e) == "conv" and "cnn" in e.value.message
    for conv, text in [("8:4", "odd"), ("8", "CHANNELS:KERNEL"), ("8:3:median", "max, avg, none"),
                       ("8:x", "non-integer"), ("", "CHANNELS:KERNEL"),
                       ("4:3,4:3,4:3,4:3", "shrink")]:
        with pytest.raises(ConfigError) as e:
            TrainConfig.from_flat(model="cnn", conv=conv).check()
        assert field(e) == "conv" and text in e.value.message, (conv, e.value.message)
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_flat(model="cnn", credit="dfa").check()
    assert field(e) == "credit" and "bp, fa" in e.value.message
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_flat(model="cnn", dropout=0.2).check()
    assert field(e) == "dropout"
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_flat(model="rnn").check()
    assert field(e) == "model" and "cnn" in e.value.message
    assert [s.text() for s in parse_conv("16:5, 32:5:avg")] == ["16:5", "32:5:avg"]
    TrainConfig.from_flat(model="cnn", dataset="fashion-mnist", conv="4:3,4:3,4:3,4:3").check()
    # a kernel wider than 2 x image - 1 has weights that never meet a pixel (they counted in
    # memory, pulses and the filter's L1 importance); 2 x 8 - 1 = 15 on digits is the limit,
    # and after one pooling the second layer's input is 4x4
    for conv in ("4:99", "4:17", "4:3,8:9"):
        with pytest.raises(ConfigError, match="never see a pixel") as e:
            TrainConfig.from_flat(model="cnn", dataset="digits", conv=conv).check()
        assert field(e) == "conv"
    TrainConfig.from_flat(model="cnn", dataset="digits", conv="4:15,4:7").check()


def test_new_field_leaves_existing_run_keys_alone():
    from grapes_hw.studies.keys import key_fields

    assert "conv" not in key_fields(TrainConfig())
    assert "conv" not in key_fields(TrainConfig.from_flat(model="cnn"))
    assert key_fields(TrainConfig.from_flat(model="cnn", conv="8:3"))["conv"] == "8:3"


def test_cli_trains_a_cnn_and_writes_result_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["train", "--model", "cnn", "--conv", "4:3", "--layers", "16", "--epochs", "1",
                 "--no-download", "--quiet", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["config"]["model"] == "cnn" and r["config"]["cnn"]["conv"] == "4:3"
    assert main(["train", "--model", "cnn", "--conv", "4:4", "--epochs", "1"]) == 2
    assert re.search(r"error: (--)?conv: ", capsys.readouterr().err)
    assert main(["train", "--model", "cnn", "--credit", "dfa", "--epochs", "1"]) == 2
    assert re.search(r"error: (--)?credit: ", capsys.readouterr().err)


def test_default_cnn_is_the_lenet_spec():
    cfg = TrainConfig.from_flat(model="cnn", dataset="fashion-mnist")
    net = build_cnn(cfg, "float32", (28, 28), 10)
    assert [c.shape for c in net.convs] == [(16, 25), (32, 400)]
    assert net.head.layers[0].shape == (256, 32 * 7 * 7)
    assert all(c.exact for c in net.convs)


def test_cnn_study_quick_variant_runs(tmp_path):
    import subprocess
    import sys

    from grapes_hw.studies.spec import load_study
    from grapes_hw.studies.store import read_runs

    study = ROOT / "studies" / "cnn.toml"
    full = load_study(study, check_backends=False)
    assert {r.config.network.model for r in full.runs} == {"cnn"}
    assert {r.config.run.seed for r in full.runs} == {0, 1, 2}
    quick = load_study(study, quick=True, check_backends=False)
    if any(r.config.device.backend.startswith("pcm") for r in quick.runs) and \
            importlib.util.find_spec("aihwkit") is None:
        pytest.skip("the quick variant runs a PCM tile: needs aihwkit")
    # In a subprocess: the sweep's forkserver keeps the environment it started with, and
    # tests/test_sweep.py passes its crash switch to workers through the environment.
    out = tmp_path / "o"
    p = subprocess.run([sys.executable, "-m", "grapes_hw.cli", "sweep", str(study), "--quick",
                        "--workers", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    recs, _ = read_runs(out / "runs.jsonl")
    assert len(recs) == len(quick.runs) + 3 * 3 * 2  # + tuning: 3 backends x 3 rules x 2 lrs
    assert all(r["status"] == "ok" for r in recs)
    assert all(r["config"]["model"] == "cnn" for r in recs)


@needs_aihwkit
def test_cnn_drift_evaluation_on_inference_tiles():
    cfg = TrainConfig.from_flat(model="cnn", conv="8:3", layers=(32,), backend="pcm-inference",
                                epochs=2,
                      lr=0.1, train_subset=1280, download=False, drift_eval=True)
    r = run(cfg)
    assert r["status"] == "ok" and len(r["drift"]) == 8  # 4 times x compensation on/off
    assert all(d["test_acc"] > 0.3 for d in r["drift"])  # measured 0.72-0.78 (chance 0.1)


def test_the_own_loop_example_of_docs_cnn_runs():
    """docs/cnn.md's second Python block (one minibatch in the user's own loop) runs as
    written: it once imported modules that did not exist."""
    md = (Path(__file__).resolve().parent.parent / "docs" / "cnn.md").read_text()
    block = md.split("in your own loop:\n\n```python\n", 1)[1].split("```", 1)[0]
    ns: dict = {}
    exec(compile(block, "docs/cnn.md", "exec"), ns)  # noqa: S102 - our own documentation
    w0 = ns["net"].convs[0].backend.read().clone()
    assert np.isfinite(ns["loss"]) and 0 <= ns["correct"] <= 64
    ns["learner"].step(ns["x_batch"], ns["y_batch"], lr=0.1)
    assert not torch.equal(ns["net"].convs[0].backend.read(), w0)  # it trains the filters
