"""BP gradients and optimizer trajectories against torch autograd / torch.optim."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_follows_torch, make_net

from grapes_hw.functional.grapes import GrapesParameters
from grapes_hw.functional.loss import softmax_error
from grapes_hw.models.mlp import ForwardCache
from grapes_hw.rules.credit import BP
from grapes_hw.rules.learner import Learner
from grapes_hw.rules.optim import SGD, Momentum, gradient


def _torch_model(weights, activation):
    layers = []
    for i, w in enumerate(weights):
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(w)
        layers.append(lin)
        if i < len(weights) - 1:
            layers.append(torch.nn.ReLU() if activation == "relu" else torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_bp_gradients_equal_autograd(small_weights, activation):
    x = torch.randn((9, 5), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0])
    net = make_net(small_weights, activation)
    learner = Learner(net, BP(net), GrapesParameters(), SGD())
    learner.cache = ForwardCache()
    logits = net.forward(x, train=True, cache=learner.cache)
    e, loss, _ = softmax_error(logits, y)
    deltas = learner.errors(e, learner.factors())
    ours = [gradient(learner.cache.inputs[l], deltas[l]) for l in range(3)]

    model = _torch_model(small_weights, activation)
    ref_loss = torch.nn.functional.cross_entropy(model(x), y)  # mean over the batch
    ref_loss.backward()
    assert loss / x.shape[0] == pytest.approx(float(ref_loss.detach()), rel=1e-12)
    for l, lin in enumerate(m for m in model if isinstance(m, torch.nn.Linear)):
        torch.testing.assert_close(ours[l], lin.weight.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["sgd", "momentum", "nag"])
def test_trajectories_equal_torch_optim(small_weights, kind):
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn((8, 5), dtype=torch.float64, generator=g),
                torch.randint(0, 4, (8,), generator=g)) for _ in range(12)]
    lr, gamma = 0.05, 0.9
    net = make_net(small_weights)
    opt = SGD() if kind == "sgd" else Momentum(gamma, nesterov=(kind == "nag"))
    learner = Learner(net, BP(net), GrapesParameters(), opt)

    model = _torch_model(small_weights, "relu")
    ref = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0 if kind == "sgd" else gamma,
                          nesterov=(kind == "nag"))
    assert_follows_torch(learner, model, ref, batches, lr, small_weights[0])


def test_optimizer_state_bytes():
    shapes = [(7, 5), (6, 7), (4, 6)]
    ws = [torch.randn(s, dtype=torch.float64) for s in shapes]
    net = make_net(ws)
    x, y = torch.randn((4, 5), dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    mom = Momentum(0.9)
    Learner(net, BP(net), GrapesParameters(), mom).step(x, y, 0.1)
    assert mom.state_bytes() == sum(a * b for a, b in shapes) * 8  # one float64 per weight
    sgd = SGD()
    Learner(net, BP(net), GrapesParameters(mode="propagating"), sgd).step(x, y, 0.1)
    assert sgd.state_bytes() == 0


def _manual_reference(weights, biases, x, y, activation, keeps, p, m=None):
    """Autograd on the same network: dropout with the given node masks (scaled by
    1/(1-p)), biases, and (GRAPES propagating) the gradient at each hidden pre-activation
    multiplied by m. Returns the loss and the weight and bias gradients."""
    ws = [w.clone().requires_grad_(True) for w in weights]
    bs = [b.clone().requires_grad_(True) for b in biases]
    h = x
    for i, (w, b) in enumerate(zip(ws, bs, strict=True)):
        a = h @ w.T + b
        if i == len(ws) - 1:
            break
        if m is not None:
            a.register_hook(lambda g, mi=m[i]: g * mi)
        h = torch.relu(a) if activation == "relu" else torch.tanh(a)
        if keeps[i] is not None:
            h = h * keeps[i] / (1.0 - p)
    loss = torch.nn.functional.cross_entropy(a, y)
    loss.backward()
    return loss, [w.grad for w in ws], [b.grad for b in bs]


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("grapes", ["off", "propagating"])
def test_bp_with_dropout_and_bias_equals_autograd(small_weights, activation, grapes):
    """Dropout (one node mask per minibatch) and digital biases: our errors give autograd's
    gradients; with GRAPES, dropped nodes sit at the lower bound m = 1 and the factors
    multiply the propagated error as a hook at the pre-activation would."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn((16, 5), dtype=torch.float64, generator=g)
    y = torch.randint(0, 4, (16,), generator=g)
    p = 0.4
    net = make_net(small_weights, activation, bias=True)
    net.dropout = p
    net.generator = torch.Generator().manual_seed(11)
    biases = []
    for layer in net.layers:
        layer.bias.w.copy_(torch.randn(layer.shape[0], 1, generator=g) * 0.3)
        biases.append(layer.bias.w[:, 0].double().clone())
    learner = Learner(net, BP(net), GrapesParameters(mode=grapes), SGD())
    learner.cache = ForwardCache()
    logits = net.forward(x, train=True, cache=learner.cache)
    keeps = list(learner.cache.keep)
    assert all(k is not None for k in keeps) and any(bool((k == 0).any()) for k in keeps)
    e, loss, _ = softmax_error(logits, y)
    m = learner.factors()
    deltas = learner.errors(e, m)
    if grapes == "propagating":
        for k, ml in zip(keeps, m, strict=True):
            assert torch.all(ml[k == 0] == 1.0)  # dropped nodes: importance 0 -> lower bound
            assert float(ml.max()) == 2.0
    ref_loss, gw, gb = _manual_reference(small_weights, biases, x, y, activation, keeps, p,
                                         m if grapes == "propagating" else None)
    assert loss / x.shape[0] == pytest.approx(float(ref_loss.detach()), rel=1e-12)
    ones = torch.ones((x.shape[0], 1), dtype=torch.float64)
    for l in range(3):
        torch.testing.assert_close(gradient(learner.cache.inputs[l], deltas[l]), gw[l],
                                   rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(gradient(ones, deltas[l])[:, 0], gb[l],
                                   rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmax_error_equals_softmax_minus_onehot(dtype):
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(64, 10, generator=g) * 4).to(dtype)
    logits[5, 3] = logits[5, 7] = logits[5].max() + 1  # a tie: the first maximum counts
    y = torch.randint(0, 10, (64,), generator=g)
    y[5] = 3
    e, loss, correct = softmax_error(logits, y)
    ref = torch.softmax(logits.double(), 1) - torch.nn.functional.one_hot(y, 10).double()
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert e.dtype == dtype
    torch.testing.assert_close(e.double(), ref, atol=tol, rtol=tol)
    ref_loss = torch.nn.functional.cross_entropy(logits.double(), y, reduction="sum")
    assert loss == pytest.approx(float(ref_loss), rel=1e-5)
    first_max = [int(torch.nonzero(row == row.max())[0]) for row in logits]
    assert correct == sum(int(a == b) for a, b in zip(first_max, y.tolist(), strict=True))


def test_softmax_error_nan_logits_give_nan_loss():
    logits = torch.zeros(4, 3)
    logits[2, 1] = float("nan")
    _, loss, _ = softmax_error(logits, torch.tensor([0, 1, 2, 0]))
    assert math.isnan(loss)
