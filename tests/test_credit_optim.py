"""FA / DFA credit assignment with GRAPES, and RMSprop / Adam against torch.optim."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_follows_torch, make_net

from grapes_hw.functional.grapes import GrapesParameters, modulation_factor
from grapes_hw.functional.loss import softmax_error
from grapes_hw.models.mlp import ForwardCache
from grapes_hw.rules.credit import BP, DFA, FA, make_credit
from grapes_hw.rules.learner import Learner
from grapes_hw.rules.optim import SGD, Adam, RMSprop, make_optimizer
from grapes_hw.rules.optim import _make_adaptive as make


def _deltas(learner, x, y):
    learner.cache = ForwardCache()
    logits = learner.net.forward(x, train=True, cache=learner.cache)
    e, _, _ = softmax_error(logits, y)
    m = learner.factors()
    return m, learner.errors(e, m)


def _data(n=9, n_in=5, n_out=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn((n, n_in), dtype=torch.float64, generator=g),
            torch.randint(0, n_out, (n,), generator=g))


@pytest.mark.parametrize("mode", ["off", "local", "propagating"])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_fa_with_transposed_weights_is_bp(small_weights, mode, activation):
    x, y = _data()
    net_bp = make_net(small_weights, activation)
    net_fa = make_net(small_weights, activation)
    fa = FA(net_fa)
    assert not torch.allclose(fa.B[0].double(), small_weights[1])  # random by default
    fa.B = [w.clone() for w in small_weights[1:]]  # B^(l+1) := W^(l+1): error = delta W
    g = GrapesParameters(mode=mode)
    _, d_bp = _deltas(Learner(net_bp, BP(net_bp), g, SGD()), x, y)
    _, d_fa = _deltas(Learner(net_fa, fa, g, SGD()), x, y)
    for a, b in zip(d_bp, d_fa, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fa_trajectory_with_transposed_weights_equals_bp(small_weights):
    # Over several steps W changes, B does not: only the first step is BP; check step 1 only
    # and that later FA steps differ from BP (B is fixed, not tied to W).
    x, y = _data()
    net_bp, net_fa = make_net(small_weights), make_net(small_weights)
    fa = FA(net_fa)
    fa.B = [w.clone() for w in small_weights[1:]]
    lb = Learner(net_bp, BP(net_bp), GrapesParameters(mode="propagating"), SGD())
    lf = Learner(net_fa, fa, GrapesParameters(mode="propagating"), SGD())
    lb.step(x, y, 0.5)
    lf.step(x, y, 0.5)
    for a, b in zip(net_bp.layers, net_fa.layers, strict=True):
        torch.testing.assert_close(a.backend.read(), b.backend.read(), rtol=0, atol=0)
    lb.step(x, y, 0.5)
    lf.step(x, y, 0.5)
    assert not torch.allclose(net_bp.layers[0].backend.read(), net_fa.layers[0].backend.read())


@pytest.mark.parametrize("mode", ["off", "propagating"])
def test_dfa_last_hidden_update_equals_fa(small_weights, mode):
    x, y = _data()
    net_fa, net_dfa = make_net(small_weights), make_net(small_weights)
    fa, dfa = FA(net_fa), DFA(net_dfa)
    last = net_fa.n_hidden - 1
    dfa.B[last] = fa.B[last].clone()  # B_dfa of the last hidden layer = FA's B of the output
    lo = None  # unbounded: the published FA/DFA variant
    _, d_fa = _deltas(Learner(net_fa, fa, GrapesParameters(mode=mode, lower=lo), SGD()), x, y)
    m, d_dfa = _deltas(Learner(net_dfa, dfa, GrapesParameters(mode=mode, lower=lo), SGD()), x, y)
    if mode == "off":
        torch.testing.assert_close(d_fa[last], d_dfa[last], rtol=0, atol=0)
    else:  # same error before GRAPES; DFA's factor is from the output layer's columns
        m_fa = modulation_factor(net_fa.layers[last].backend.abs_sums(1), lower=None)
        torch.testing.assert_close(d_fa[last] / m_fa, d_dfa[last] / m[last])
    # earlier DFA layers get e @ B^l directly, not through the layer above
    _, d_off = _deltas(Learner(net_dfa, dfa, GrapesParameters(), SGD()), x, y)
    e, _, _ = softmax_error(net_dfa.forward(x), y)
    h0 = torch.relu(x @ small_weights[0].T)
    torch.testing.assert_close(d_off[0], (e @ dfa.B[0].double()) * (h0 > 0))


def _inputs(net, x):
    c = ForwardCache()
    net.forward(x, train=True, cache=c)
    return c.inputs


def test_dfa_grapes_importance_is_next_layer_column_sums():
    # hand-made: layer 0 (3 nodes), output layer with known columns
    w0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    w1 = torch.tensor([[1.0, -2.0, 0.5], [-3.0, 0.0, 0.5]], dtype=torch.float64)
    net = make_net([w0, w1])
    learner = Learner(net, DFA(net), GrapesParameters(mode="propagating"), SGD())
    learner.cache = ForwardCache()
    net.forward(torch.ones((1, 2), dtype=torch.float64), train=True, cache=learner.cache)
    (m,) = learner.factors()
    # column sums |w1| = [4, 2, 1] -> 2 * i / 4 = [2, 1, 0.5] -> clipped at 1: [2, 1, 1]
    assert m.tolist() == pytest.approx([2.0, 1.0, 1.0])
    # not the row sums of w0 ([1, 1, 2] -> [1, 1, 2])
    learner_bp = Learner(net, BP(net), GrapesParameters(mode="propagating"), SGD())
    learner_bp.cache = learner.cache
    assert learner_bp.factors()[0].tolist() == pytest.approx([1.0, 1.0, 2.0])
    # --grapes-lower none: the published unbounded DFA variant
    learner.grapes = GrapesParameters(mode="propagating", lower=None)
    assert learner.factors()[0].tolist() == pytest.approx([2.0, 1.0, 0.5])
    # FA: own rows, unbounded
    learner_fa = Learner(net, FA(net), GrapesParameters(mode="propagating", lower=None), SGD())
    learner_fa.cache = learner.cache
    assert learner_fa.factors()[0].tolist() == pytest.approx([1.0, 1.0, 2.0])


def test_make_credit_rejects_unknown():
    net = make_net([torch.eye(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)])
    with pytest.raises(ValueError, match="bp, fa, dfa"):
        make_credit("xx", net)


# ---- RMSprop / Adam -----------------------------------------------------------------------
def _torch_model(weights):
    layers = []
    for i, w in enumerate(weights):
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(w)
        layers.append(lin)
        if i < len(weights) - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


@pytest.mark.parametrize("kind", ["rmsprop", "rmsprop-momentum", "rmsprop-centered", "adam"])
def test_adaptive_trajectories_equal_torch_optim(small_weights, kind):
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn((8, 5), dtype=torch.float64, generator=g),
                torch.randint(0, 4, (8,), generator=g)) for _ in range(15)]
    lr = 0.01
    net = make_net(small_weights)
    model = _torch_model(small_weights)
    if kind == "adam":
        opt = make_optimizer("adam")
        ref = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    else:
        kw = {"momentum": 0.5} if kind == "rmsprop-momentum" else {}
        if kind == "rmsprop-centered":
            kw = {"centered": True}
        opt = make("rmsprop", **kw)  # make_optimizer's own ``momentum`` is for momentum/nag
        ref = torch.optim.RMSprop(model.parameters(), lr=lr, alpha=0.9, eps=1e-8, **kw)
    learner = Learner(net, BP(net), GrapesParameters(), opt)
    assert_follows_torch(learner, model, ref, batches, lr, small_weights[0])


def test_rmsprop_eps_outside_sqrt():
    # one step from v = 0 with a tiny gradient: v = 0.1 g^2, step = lr g / (sqrt(v) + eps)
    class Rec:
        def increment(self, dw):
            self.dw = dw

    gval = 1e-8
    x = torch.ones((1, 1), dtype=torch.float64)
    d = torch.full((1, 1), gval, dtype=torch.float64)
    b = Rec()
    RMSprop().step("k", b, x, d, 1.0)
    expected = gval / ((0.1 * gval * gval) ** 0.5 + 1e-8)
    assert float(-b.dw) == pytest.approx(expected, rel=1e-12)
    assert float(-b.dw) != pytest.approx(gval / (0.1 * gval * gval + 1e-8) ** 0.5, rel=1e-3)


@pytest.mark.parametrize("name", ["rmsprop", "adam"])
def test_adaptive_with_grapes_uses_modulated_gradient(small_weights, name):
    # GRAPES + optimizer == optimizer fed with the modulated gradient by hand.
    x, y = _data(n=8)
    net = make_net(small_weights)
    opt = make(name)
    learner = Learner(net, BP(net), GrapesParameters(mode="propagating"), opt)
    ref_net = make_net(small_weights)
    ref = Learner(ref_net, BP(ref_net), GrapesParameters(mode="propagating"), SGD())
    m, deltas = _deltas(ref, x, y)
    inputs = _inputs(ref_net, x)
    learner.step(x, y, 0.01)
    ref_opt = make(name)
    plain = Learner(ref_net, BP(ref_net), GrapesParameters(), SGD())
    _, d_plain = _deltas(plain, x, y)
    assert not torch.allclose(d_plain[0], deltas[0])  # the modulation changes the error
    for l, layer in enumerate(ref_net.layers):
        ref_opt.step(("w", l), layer.backend, inputs[l], deltas[l], 0.01)
    for a, b in zip(net.layers, ref_net.layers, strict=True):
        torch.testing.assert_close(a.backend.read(), b.backend.read(), rtol=1e-12, atol=1e-14)


def test_adaptive_state_bytes():
    shapes = [(7, 5), (6, 7), (4, 6)]
    ws = [torch.randn(s, dtype=torch.float64) for s in shapes]
    n = sum(a * b for a, b in shapes)
    x, y = torch.randn((4, 5), dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    rms = RMSprop()
    assert rms.state_bytes() == 0
    net = make_net(ws)
    Learner(net, BP(net), GrapesParameters(mode="propagating"), rms).step(x, y, 0.01)
    assert rms.state_bytes() == n * 8  # one float64 per weight: the buffers' own dtype
    adam = Adam(state_bits=16)
    net = make_net(ws)
    learner = Learner(net, BP(net), GrapesParameters(), adam)
    learner.step(x, y, 0.01)
    learner.step(x, y, 0.01)
    assert adam.state_bytes() == 2 * n * 2 + 3 * 4  # m and v at 16 bits + 3 step counters
    rmc = RMSprop(centered=True, momentum=0.9)
    net = make_net(ws)
    Learner(net, BP(net), GrapesParameters(), rmc).step(x, y, 0.01)
    assert rmc.state_bytes() == 3 * n * 8


@pytest.mark.parametrize("dtype, size", [(torch.float32, 4), (torch.float64, 8)])
def test_velocity_bytes_follow_the_dtype(dtype, size):
    """Momentum's velocity costs its dtype's size per weight (8 bytes in float64), and
    ``state_bits`` when a digital format holds it."""
    from grapes_hw.rules.optim import Momentum

    shapes = [(7, 5), (4, 7)]
    ws = [torch.randn(s, dtype=dtype) for s in shapes]
    n = sum(a * b for a, b in shapes)
    x, y = torch.randn((4, 5), dtype=dtype), torch.tensor([0, 1, 2, 3])
    for opt, per_weight in ((Momentum(0.9), size), (Momentum(0.9, state_bits=8), 1)):
        net = make_net(ws, dtype=str(dtype).removeprefix("torch."))
        Learner(net, BP(net), GrapesParameters(), opt).step(x, y, 0.01)
        assert opt.state_bytes() == n * per_weight


def test_adaptive_writes_through_increment_and_state_format():
    calls = []

    class Rec:
        def increment(self, dw):
            calls.append(dw.clone())

    rounded = []
    adam = Adam(state_format=lambda t: rounded.append(t.shape) or t.round_(decimals=3))
    x = torch.ones((2, 3), dtype=torch.float64)
    d = torch.ones((2, 4), dtype=torch.float64)
    adam.step("k", Rec(), x, d, 0.1)
    assert len(calls) == 1 and calls[0].shape == (4, 3)
    assert len(rounded) == 2  # m and v rounded to the digital format
    # first Adam step is lr * sign(g) (up to eps)
    torch.testing.assert_close(calls[0], torch.full((4, 3), -0.1, dtype=torch.float64))
    with pytest.raises(ValueError, match="rmsprop, adam"):
        make("adagrad")
