"""GRAPES on hand-made weights, exactly as in ../shared/GRAPES.md."""

from __future__ import annotations

import pytest
import torch
from conftest import make_net

from grapes_hw.functional.grapes import (
    GrapesParameters,
    importance_cols,
    importance_rows,
    modulation_factor,
)
from grapes_hw.models.mlp import ForwardCache
from grapes_hw.rules.credit import BP
from grapes_hw.rules.learner import Learner
from grapes_hw.rules.optim import SGD


def test_largest_row_sum_gets_2_and_under_half_gets_1():
    w = torch.tensor([[1.0, -3.0], [0.5, 1.0], [2.0, 0.0], [-1.0, -0.9], [0.0, 0.0]])
    imp = importance_rows(w)
    assert imp.tolist() == pytest.approx([4.0, 1.5, 2.0, 1.9, 0.0])
    m = modulation_factor(imp)
    # max -> 2; exactly half of max -> 1; under half -> clipped up to 1
    assert m.tolist() == pytest.approx([2.0, 1.0, 1.0, 1.0, 1.0])
    m2 = modulation_factor(torch.tensor([4.0, 3.0, 2.5]))
    assert m2.tolist() == pytest.approx([2.0, 1.5, 1.25])


def test_lower_bound_none_is_unbounded_and_bits_quantise():
    imp = torch.tensor([4.0, 1.0, 2.8])
    assert modulation_factor(imp.clone(), lower=None).tolist() == pytest.approx([2.0, 0.5, 1.4])
    # 2 bits: levels {1, 4/3, 5/3, 2}; 1.4 -> 4/3
    q = modulation_factor(imp.clone(), lower=1.0, bits=2)
    assert q.tolist() == pytest.approx([2.0, 1.0, 4 / 3])


def test_zero_weights_give_unit_factor_not_nan():
    assert modulation_factor(torch.zeros(3)).tolist() == [1.0, 1.0, 1.0]


def test_dfa_importance_is_next_layer_column_sums():
    w_next = torch.tensor([[1.0, -2.0, 0.5], [-3.0, 0.0, 0.5]])
    assert importance_cols(w_next).tolist() == pytest.approx([4.0, 2.0, 1.0])


def _errors(net, x, y, mode):
    lr = Learner(net, BP(net), GrapesParameters(mode=mode), SGD())
    lr.cache = ForwardCache()
    logits = net.forward(x, train=True, cache=lr.cache)
    from grapes_hw.functional.loss import softmax_error

    e, _, _ = softmax_error(logits, y)
    m = lr.factors()
    return e, m, lr.errors(e.clone(), m)


def _positive_net():
    # Positive weights and inputs: every ReLU is active, f' = 1, so the errors are linear.
    g = torch.Generator().manual_seed(0)
    ws = [torch.rand(s, generator=g, dtype=torch.float64) + 0.05 for s in [(5, 4), (6, 5), (3, 6)]]
    # make row sums distinct so that m varies across nodes
    ws[0][0] *= 3.0
    ws[1][2] *= 2.5
    x = torch.rand((8, 4), generator=g, dtype=torch.float64)
    return ws, x, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


def test_propagating_factors_compound():
    ws, x, y = _positive_net()
    net = make_net(ws)
    e, m, deltas = _errors(net, x, y, "propagating")
    m1, m2 = m
    assert m1.max() == 2.0 and m1.min() >= 1.0 and m2.max() == 2.0
    w2, w3 = ws[1], ws[2]
    expected_d2 = m2 * (e @ w3)
    expected_d1 = m1 * ((m2 * (e @ w3)) @ w2)  # m2 travels down: factors compound
    torch.testing.assert_close(deltas[1], expected_d2)
    torch.testing.assert_close(deltas[0], expected_d1)
    # and that differs from modulating only locally
    assert not torch.allclose(deltas[0], m1 * ((e @ w3) @ w2))


def test_local_version_leaves_propagated_error_untouched():
    ws, x, y = _positive_net()
    e, m, d_local = _errors(make_net(ws), x, y, "local")
    _, _, d_off = _errors(make_net(ws), x, y, "off")
    for l in range(2):
        torch.testing.assert_close(d_local[l], m[l] * d_off[l])
    # the unmodulated error is what reached layer 0: d_off[0] uses W3^T e without m2
    torch.testing.assert_close(d_off[0], (e @ ws[2]) @ ws[1])


@pytest.mark.parametrize("mode", ["off", "local", "propagating"])
def test_output_error_is_never_modulated(mode, small_weights):
    net = make_net(small_weights)
    x = torch.rand((5, 5), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0])
    e, _, deltas = _errors(net, x, y, mode)
    torch.testing.assert_close(deltas[-1], e)


def test_factors_recomputed_from_weights_each_minibatch():
    ws, x, y = _positive_net()
    net = make_net(ws)
    learner = Learner(net, BP(net), GrapesParameters(mode="propagating"), SGD())
    before = [net.layers[l].backend.read().clone() for l in range(2)]
    learner.step(x, y, lr=2.0)
    for l in range(2):  # step 1 used the initial weights
        torch.testing.assert_close(learner.last_factors[l],
                                   modulation_factor(importance_rows(before[l])))
    mid = [net.layers[l].backend.read().clone() for l in range(2)]
    assert not torch.equal(mid[0], before[0])
    learner.step(x, y, lr=2.0)
    for l in range(2):  # step 2 used the weights after step 1's update, not the initial ones
        torch.testing.assert_close(learner.last_factors[l],
                                   modulation_factor(importance_rows(mid[l])))


@pytest.mark.parametrize("bad", [0.0, float("nan"), float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_degenerate_importance_gives_unit_factor(bad, dtype):
    imp = torch.zeros(5) if bad == 0.0 else torch.tensor([1.0, bad, 2.0, 0.5, 0.1])
    m = modulation_factor(imp.to(dtype))
    assert m.dtype == dtype and m.tolist() == [1.0] * 5


@pytest.mark.parametrize("lower, bits", [(1.0, 2), (None, 3), (0.7, 4), (1.0, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_held_factors_lie_on_the_bits_grid(lower, bits, dtype):
    imp = (torch.rand(300, generator=torch.Generator().manual_seed(1)) * 5).to(dtype)
    m = modulation_factor(imp, lower, bits)
    exact = modulation_factor(imp, lower).double()
    lo = float(exact.min()) if lower is None else lower
    step = (2.0 - lo) / ((1 << bits) - 1)
    k = (m.double() - lo) / step
    assert len(torch.unique(m)) <= 2 ** bits and float(m.max()) == pytest.approx(2.0)
    torch.testing.assert_close(k, k.round(), rtol=0, atol=1e-5)  # on the grid
    assert float((m.double() - exact).abs().max()) <= step / 2 + 1e-6  # the nearest level
