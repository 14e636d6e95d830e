"""Spiking neural units: dynamics, BPTT gradients, GRAPES, and learning rate-coded digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grapes_hw.backends.float_backend import FloatBackend, FloatParams
from grapes_hw.functional.grapes import GrapesParameters, importance_rows, modulation_factor
from grapes_hw.functional.snu import SNUParams, h_grad, h_out, rate_code, snu_step
from grapes_hw.models.mlp import HWLinear
from grapes_hw.models.snu import SNUNetwork
from grapes_hw.rules.optim import SGD
from grapes_hw.rules.snu import SNULearner
from grapes_hw.training.config import TrainConfig
from grapes_hw.training.train import run


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


def _autograd_loss(ws, bs, xs, y, soft, decay, scale="default", out_relu=False):
    scale = SNUParams().readout_scale if scale == "default" else scale
    h = torch.sigmoid if soft else _Step.apply
    inp = xs
    for l, (w, b) in enumerate(zip(ws, bs, strict=True)):
        g = torch.relu if l < len(ws) - 1 or out_relu else (lambda u: u)
        s = torch.zeros((xs.shape[1], w.shape[0]), dtype=torch.float64)
        yy = torch.zeros_like(s)
        outs = []
        for t in range(xs.shape[0]):
            s = g(inp[t] @ w.T + decay * s * (1 - yy))
            yy = h(s + b)
            outs.append(yy)
        inp = torch.stack(outs)
    logits = inp.mean(0) * (xs.shape[0] if scale is None else scale)  # None: spike counts
    return torch.nn.functional.cross_entropy(logits, y, reduction="sum")


@pytest.mark.parametrize("output_g", ["identity", "relu"])
@pytest.mark.parametrize("soft", [False, True])
def test_bptt_equals_autograd(soft, output_g):
    ws, bs, xs, y = _case()
    params = SNUParams(decay=0.7, output_g=output_g)
    net = _net(ws, bs, soft, params)
    loss, _, traces, grads, _ = SNULearner(net, GrapesParameters(), SGD(), 6).gradients(xs, y)
    W = [w.clone().requires_grad_() for w in ws]
    B = [b.clone().requires_grad_() for b in bs]
    ref = _autograd_loss(W, B, xs, y, soft, 0.7, out_relu=output_g == "relu")
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
    return TrainConfig.from_flat(**base)


def test_snu_learns_rate_coded_digits_and_result_keys():
    r = run(_digits_cfg(grapes="propagating"))
    assert r["status"] == "ok"
    assert r["best_test_acc"] > 0.5, r["epochs"]  # chance is 0.1
    mlp = run(TrainConfig.from_flat(dataset="digits", layers=(8,), epochs=1, train_subset=100))
    assert set(r) == set(mlp)
    assert set(r["epochs"][0]) == set(mlp["epochs"][0])
    assert r["memory"]["n_weights"] == 64 * 48 + 48 * 10
    assert r["pulses_total"] > 0


def test_snu_on_fixed_point_backend_runs():
    from grapes_hw.backends.registry import list_models

    if "fixed8" not in {p.stem for p in list_models()}:
        pytest.skip("fixed8 device model not available")
    r = run(_digits_cfg(backend="fixed8", epochs=1, train_subset=300))
    assert r["status"] == "ok" and r["final_test_acc"] is not None
    assert r["device_model"]["backend"] != "float"


def test_snu_config_errors():
    from grapes_hw.errors import ConfigError

    for kw, field in (({"credit": "fa"}, "credit"), ({"dropout": 0.2}, "dropout"),
                      ({"model": "lstm"}, "model"), ({"time_steps": 0}, "time_steps")):
        with pytest.raises(ConfigError) as e:
            _digits_cfg(**kw).check()
        assert e.value.field == field  # the Python field; the CLI says --time-steps etc.
    with pytest.raises(ConfigError, match="snu.decay"):
        _digits_cfg(extra={"snu": {"decay": 1.5}}).check()


# ---- what keeps SNU training stable (see the snu.py docstring) -------------------------------
def test_trained_threshold_stays_positive_so_a_silent_input_never_spikes():
    # The collapse: cross-entropy raised an output bias b over 0, and with the ReLU state
    # s >= 0 that unit then spikes at every step whatever its input (test accuracy 0.102).
    # After every update b is clipped to <= -min_threshold.
    g = torch.Generator().manual_seed(0)
    w = torch.rand((3, 5), dtype=torch.float64, generator=g)
    b = torch.tensor([-0.15, -1.0, -1.0], dtype=torch.float64)
    net = _net([w], [b], False, SNUParams(decay=0.7))
    x = torch.rand((8, 5), dtype=torch.float64, generator=g)
    y = torch.zeros(8, dtype=torch.long)  # class 0 everywhere: its bias is pushed up
    learner = SNULearner(net, GrapesParameters(), SGD(), 6, torch.Generator().manual_seed(1))
    learner.step(x, y, lr=5.0)
    silent = torch.zeros((6, 4, 5), dtype=torch.float64)  # no input spikes at all
    rates, _ = net.forward(silent)
    assert float(rates.max()) == 0.0
    b_after = net.layers[0].bias.read()[:, 0]
    assert float(b_after[0]) == pytest.approx(-SNUParams().min_threshold)  # clipped, not > 0
    assert bool((b_after <= -SNUParams().min_threshold).all())
    # without the floor the same step takes b[0] over 0 and the silent input fires always
    raw = _net([w], [b], False, SNUParams(decay=0.7, min_threshold=0.0))
    _, _, _, grads, _ = SNULearner(raw, GrapesParameters(), SGD(), 6).gradients(
        rate_code(x, 6, torch.Generator().manual_seed(1)), y)
    unclipped = b[0] - 5.0 * float(grads[0][1][:, :, 0].sum()) / 8
    assert unclipped > 0  # the step really would cross 0: the floor is what holds it


def test_partial_batch_moves_weights_by_its_share():
    # Digits ends every epoch with a batch of 3 (1347 = 21 * 64 + 3); its batch-mean step at
    # the full lr broke the runs. With batch_size N a batch of B < N takes B/N of the step.
    ws, bs, _, y = _case()
    x = torch.rand((7, 5), dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    steps = {}
    for nominal in (None, 7, 28):
        net = _net(ws, bs, False, SNUParams(decay=0.7))
        learner = SNULearner(net, GrapesParameters(), SGD(), 6, torch.Generator().manual_seed(3),
                             batch_size=nominal)
        learner.step(x, y, 0.3)
        steps[nominal] = [net.layers[l].backend.read() - ws[l] for l in range(3)]
    for l in range(3):
        torch.testing.assert_close(steps[7][l], steps[None][l])  # a full batch: unchanged
        torch.testing.assert_close(steps[28][l], steps[None][l] * (7 / 28))
        assert steps[None][l].abs().sum() > 0


def _first_output_update(readout_scale):
    """Relative change of the output weights after one SGD step (lr 0.1) on one digits batch
    of the default 3 x 256 SNU."""
    import numpy as np

    from grapes_hw.backends.registry import load_device_model
    from grapes_hw.data.datasets import load_dataset
    from grapes_hw.training.driver import build_optimizer
    from grapes_hw.training.train import build_snu_network

    cfg = TrainConfig.from_flat(model="snu", extra={"snu": {"readout_scale": readout_scale}})
    data = load_dataset("digits", seed=0)
    x = torch.from_numpy(np.ascontiguousarray(data.x_train[:64], dtype=np.float32))
    yy = torch.from_numpy(np.asarray(data.y_train[:64], dtype=np.int64))
    net = build_snu_network(cfg, load_device_model("float32"), 64, 10)
    w0 = net.layers[-1].backend.read().clone()
    SNULearner(net, cfg.grapes_params(), build_optimizer(cfg), cfg.network.time_steps,
               torch.Generator().manual_seed(1)).step(x, yy, 0.1)  # a full batch
    return float((net.layers[-1].backend.read() - w0).norm() / w0.norm())


def test_default_readout_keeps_output_updates_mlp_sized():
    # logits = spike counts (scale N_s = 20) made one step at lr 0.1 change the output
    # weights by ~20 % of their norm (the MLP's output layer: ~4 %); early overshoots then
    # silenced the output layer for good. The default scale 10: ~5-8 %.
    counts, default = _first_output_update(None), _first_output_update(10.0)
    assert SNUParams().readout_scale == 10.0
    assert counts > 0.15
    assert default < 0.10
    assert counts > 2.5 * default


@pytest.mark.parametrize("seed", [0, 1])
def test_snu_defaults_learn_digits_without_collapse(seed):
    # the default SNU (decay, threshold, readout, floor; SGD at its default lr 0.1), small:
    # 2 x 128, 5 epochs (~4 s). Before the fixes the default run fell to 0.102 at epoch 3.
    r = run(TrainConfig.from_flat(dataset="digits", model="snu", layers=(128, 128), epochs=5,
                                  seed=seed))
    accs = [e["test_acc"] for e in r["epochs"]]
    assert r["status"] == "ok"
    assert r["config"]["lr"] == 0.1 and r["config"]["lr_source"] == "default for sgd"
    assert r["best_test_acc"] > 0.85, accs
    assert all(b >= a - 0.05 for a, b in zip(accs[1:-1], accs[2:], strict=True)), accs  # no dip


def _output_resting_z(center):
    """Mean over steps and 512 digits images of each sSNU output unit's s + b at init."""
    from grapes_hw.backends.registry import resolve_device_model
    from grapes_hw.data.datasets import load_dataset
    from grapes_hw.functional.snu import rate_code
    from grapes_hw.training.driver import build_optimizer
    from grapes_hw.training.train import build_snu_run

    extra = {} if center is None else {"snu": {"center_output": center}}
    cfg = TrainConfig.from_flat(dataset="digits", model="ssnu", layers=(256, 256), seed=1,
                                extra=extra)
    data = load_dataset("digits", seed=1)
    x = torch.from_numpy(np.ascontiguousarray(data.x_train[:512], dtype=np.float32))
    m = build_snu_run(cfg, resolve_device_model("float32"), data, x, build_optimizer(cfg))
    _, traces = m.net.forward(rate_code(x, 20, torch.Generator().manual_seed(0)), keep=True)
    return traces[-1].z.mean((0, 1)), m.net


def test_ssnu_output_units_start_alive_with_centred_rows():
    """The stall's cause: uncentred output rows leave some sSNU output units so far below
    threshold that their sigmoid slope is ~0 (they never learn); centred rows (the sSNU
    default) halve the spread of the units' resting states and lift the lowest."""
    z_raw, _ = _output_resting_z(False)
    z, net = _output_resting_z(None)
    assert float(z_raw.min()) < -9.0  # seed 1: classes 1 and 2 at -8.1 and -10.1
    assert float(z.min()) > -6.5  # centred: -2.1 ... -6.1, the slope at the lowest 50x larger
    assert float(z.std()) < 0.6 * float(z_raw.std())
    w = net.layers[-1].backend.read()
    assert torch.allclose(w.mean(1), torch.zeros(w.shape[0]), atol=1e-6)
    assert net.params.center_output is True
    # the SNU keeps its rows as drawn
    snu = TrainConfig.from_flat(dataset="digits", model="snu", layers=(32,), seed=1)
    r = run(snu.replace(epochs=1))
    assert r["config"]["snu"]["center_output"] is False


@pytest.mark.parametrize("seed", [1, 2])
def test_ssnu_defaults_learn_digits_at_the_papers_depth(seed):
    # 2 x 256 sSNU (the paper's depth), the seeds that stalled at 0.78 / 0.86 before the
    # output rows were centred; 8 epochs (~10 s)
    r = run(TrainConfig.from_flat(dataset="digits", model="ssnu", layers=(256, 256),
                                  epochs=8, seed=seed))
    assert r["status"] == "ok"
    assert r["best_test_acc"] > 0.85, [e["test_acc"] for e in r["epochs"]]
