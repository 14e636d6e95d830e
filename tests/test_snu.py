"""Spiking neural units: dynamics, BPTT gradients, GRAPES, and learning rate-coded digits."""

from __future__ import annotations

import pytest
import torch

from grapes_hw.backends.float_backend import FloatBackend, FloatParams
from grapes_hw.grapes import GrapesParameters, importance_rows, modulation_factor
from grapes_hw.network import HWLinear
from grapes_hw.optim import SGD
from grapes_hw.snu import SNULearner, SNUNetwork, SNUParams, h_grad, h_out, rate_code, snu_step
from grapes_hw.train import TrainConfig, run


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # many tiny matmuls: OpenMP threads only add overhead (and stall on a busy machine)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_spike_exactly_at_threshold_crossing_and_reset():
    d, b = 0.8, torch.tensor([-1.0], dtype=torch.float64)
    a_seq = [0.5, 0.4, 0.3, 0.3, 0.3, 0.0]
    s = torch.zeros(1, dtype=torch.float64)
    y = torch.zeros(1, dtype=torch.float64)
    states, spikes = [], []
    for a in a_seq:
        _, s, y = snu_step(torch.tensor([a], dtype=torch.float64), s, y, b, d, soft=False)
        states.append(float(s))
        spikes.append(float(y))
    # s: 0.5, 0.8, 0.94, 1.052 (> 1: spike), then the reset: 0.3 + 0.8 * 1.052 * (1 - 1) = 0.3
    assert states == pytest.approx([0.5, 0.8, 0.94, 1.052, 0.3, 0.24])
    assert spikes == [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    # spike iff s_t + b > 0, exactly
    z = torch.tensor([-1e-9, 0.0, 1e-9])
    assert h_out(z, soft=False).tolist() == [0.0, 0.0, 1.0]
    # g = ReLU: the state never goes negative
    _, s, _ = snu_step(torch.tensor([-2.0], dtype=torch.float64), s, y, b, d, soft=False)
    assert float(s) == 0.0


def test_soft_reset_scales_carried_state():
    b = torch.tensor([0.0], dtype=torch.float64)
    s_prev = torch.tensor([2.0], dtype=torch.float64)
    y_prev = torch.sigmoid(s_prev)
    _, s, y = snu_step(torch.tensor([0.1], dtype=torch.float64), s_prev, y_prev, b, 0.5, soft=True)
    carried = 0.5 * 2.0 * (1 - float(torch.sigmoid(torch.tensor(2.0))))
    assert float(s) == pytest.approx(0.1 + carried)
    assert float(y) == pytest.approx(float(torch.sigmoid(s)))


@pytest.mark.parametrize("slope", [1.0, 3.0])
def test_surrogate_is_derivative_of_sigmoid_relaxation(slope):
    z = torch.linspace(-4, 4, 41, dtype=torch.float64)
    eps = 1e-6
    fd = (torch.sigmoid(slope * (z + eps)) - torch.sigmoid(slope * (z - eps))) / (2 * eps)
    torch.testing.assert_close(h_grad(z, slope), fd, rtol=1e-7, atol=1e-9)


def _net(ws, bs, soft, params):
    layers = []
    for w, b in zip(ws, bs, strict=True):
        be = FloatBackend(tuple(w.shape), FloatParams(dtype="float64"))
        be.program(w)
        layer = HWLinear(be, bias=True)
        layer.bias = FloatBackend((w.shape[0], 1), FloatParams(dtype="float64"))
        layer.bias.program(b[:, None].clone())
        layers.append(layer)
    return SNUNetwork(layers, soft, params)


def _case(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(6, 5), (5, 6), (3, 5)]
    ws = [torch.randn(s, dtype=torch.float64, generator=g) for s in shapes]
    bs = [torch.randn(s[0], dtype=torch.float64, generator=g) * 0.3 - 0.5 for s in shapes]
    x = torch.rand((7, 5), dtype=torch.float64, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    xs = rate_code(x, 6, torch.Generator().manual_seed(seed + 1))
    return ws, bs, xs, y


class _Step(torch.autograd.Function):
    """Heaviside forward, sigmoid-derivative backward: the SNU's surrogate in autograd."""

    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return (z > 0).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        s = torch.sigmoid(z)
        return g * s * (1 - s)


def _autograd_loss(ws, bs, xs, y, soft, decay):
    h = torch.sigmoid if soft else _Step.apply
    inp = xs
    for w, b in zip(ws, bs, strict=True):
        s = torch.zeros((xs.shape[1], w.shape[0]), dtype=torch.float64)
        yy = torch.zeros_like(s)
        outs = []
        for t in range(xs.shape[0]):
            s = torch.relu(inp[t] @ w.T + decay * s * (1 - yy))
            yy = h(s + b)
            outs.append(yy)
        inp = torch.stack(outs)
    logits = inp.mean(0) * xs.shape[0]  # spike counts
    return torch.nn.functional.cross_entropy(logits, y, reduction="sum")


@pytest.mark.parametrize("soft", [False, True])
def test_bptt_equals_autograd(soft):
    ws, bs, xs, y = _case()
    params = SNUParams(decay=0.7)
    net = _net(ws, bs, soft, params)
    loss, _, traces, grads, _ = SNULearner(net, GrapesParameters(), SGD(), 6).gradients(xs, y)
    W = [w.clone().requires_grad_() for w in ws]
    B = [b.clone().requires_grad_() for b in bs]
    ref = _autograd_loss(W, B, xs, y, soft, 0.7)
    ref.backward()
    assert loss == pytest.approx(float(ref.detach()), rel=1e-12)
    for l in range(3):
        g_a, g_b = grads[l]
        torch.testing.assert_close(torch.einsum("tbn,tbi->ni", g_a, traces[l].x), W[l].grad)
        torch.testing.assert_close(g_b.sum((0, 1)), B[l].grad)
        assert W[l].grad.abs().sum() > 0


def test_ssnu_bptt_matches_finite_differences():
    # the sSNU is differentiable (ReLU kinks aside): BPTT = finite difference of the loss
    ws, bs, xs, y = _case(seed=4)
    params = SNUParams(decay=0.6)
    net = _net(ws, bs, True, params)
    _, _, traces, grads, _ = SNULearner(net, GrapesParameters(), SGD(), 6).gradients(xs, y)
    eps = 1e-6
    for l, (i, j) in [(0, (2, 3)), (1, (1, 4)), (2, (0, 2))]:
        analytic = float(torch.einsum("tbn,tbi->ni", grads[l][0], traces[l].x)[i, j])
        wp = [w.clone() for w in ws]
        wm = [w.clone() for w in ws]
        wp[l][i, j] += eps
        wm[l][i, j] -= eps
        fd = (float(_autograd_loss(wp, bs, xs, y, True, 0.6))
              - float(_autograd_loss(wm, bs, xs, y, True, 0.6))) / (2 * eps)
        assert analytic == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_sgd_step_is_lr_times_batch_mean_gradient():
    # one update through the backend: W <- W - lr * (1/B) sum_t delta_t^T x_t (see snu.py)
    ws, bs, _, y = _case()
    x = torch.rand((7, 5), dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    net = _net(ws, bs, False, SNUParams(decay=0.7))
    learner = SNULearner(net, GrapesParameters(), SGD(), 6, torch.Generator().manual_seed(3))
    xs = rate_code(x, 6, torch.Generator().manual_seed(3))  # the spikes step() will draw
    W = [w.clone().requires_grad_() for w in ws]
    B = [b.clone().requires_grad_() for b in bs]
    (_autograd_loss(W, B, xs, y, False, 0.7) / x.shape[0]).backward()
    lr = 0.3
    learner.step(x, y, lr)
    for l in range(3):
        torch.testing.assert_close(net.layers[l].backend.read(), ws[l] - lr * W[l].grad)
        torch.testing.assert_close(net.layers[l].bias.read()[:, 0], bs[l] - lr * B[l].grad)


@pytest.mark.parametrize("mode", ["local", "propagating"])
def test_grapes_modulates_hidden_input_weights(mode):
    ws, bs, xs, y = _case()
    net = _net(ws, bs, False, SNUParams(decay=0.7))
    *_, g_off, _ = SNULearner(net, GrapesParameters(), SGD(), 6).gradients(xs, y)
    *_, g_on, m = SNULearner(net, GrapesParameters(mode=mode), SGD(), 6).gradients(xs, y)
    for l in range(2):
        torch.testing.assert_close(m[l], modulation_factor(importance_rows(ws[l])))
    torch.testing.assert_close(g_on[2][0], g_off[2][0])  # output layer: not modulated
    torch.testing.assert_close(g_on[1][0], m[1] * g_off[1][0])  # last hidden: m per node
    torch.testing.assert_close(g_on[1][1], m[1] * g_off[1][1])
    if mode == "local":
        torch.testing.assert_close(g_on[0][0], m[0] * g_off[0][0])
    else:  # m[1] travels down: layer 0's error is not just m[0] times the plain one
        assert not torch.allclose(g_on[0][0], m[0] * g_off[0][0])


def _digits_cfg(**kw):
    base = dict(dataset="digits", model="snu", layers=(48,), lr=0.3, epochs=3, batch_size=32,
                time_steps=8, test_time_steps=8, train_subset=800, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_snu_learns_rate_coded_digits_and_result_keys():
    r = run(_digits_cfg(grapes="propagating"))
    assert r["status"] == "ok"
    assert r["best_test_acc"] > 0.5, r["epochs"]  # chance is 0.1
    mlp = run(TrainConfig(dataset="digits", layers=(8,), epochs=1, train_subset=100))
    assert set(r) == set(mlp)
    assert set(r["epochs"][0]) == set(mlp["epochs"][0])
    assert r["memory"]["n_weights"] == 64 * 48 + 48 * 10
    assert r["pulses_total"] > 0


def test_snu_on_fixed_point_backend_runs():
    from grapes_hw.devices import list_models

    if "fixed8" not in {p.stem for p in list_models()}:
        pytest.skip("fixed8 device model not available")
    r = run(_digits_cfg(backend="fixed8", epochs=1, train_subset=300))
    assert r["status"] == "ok" and r["final_test_acc"] is not None
    assert r["device_model"]["backend"] != "float"


def test_snu_config_errors():
    from grapes_hw.errors import ConfigError

    with pytest.raises(ConfigError, match="--credit"):
        _digits_cfg(credit="fa").check()
    with pytest.raises(ConfigError, match="--dropout"):
        _digits_cfg(dropout=0.2).check()
    with pytest.raises(ConfigError, match="--model"):
        _digits_cfg(model="lstm").check()
    with pytest.raises(ConfigError, match="snu.decay"):
        _digits_cfg(extra={"snu": {"decay": 1.5}}).check()
    with pytest.raises(ConfigError, match="--time-steps"):
        _digits_cfg(time_steps=0).check()
