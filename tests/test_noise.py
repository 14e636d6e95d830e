"""Noise models around float and fixed-point backends: statistics, stuck cells, seeds, config."""

from __future__ import annotations

import math

import pytest
import torch

from grapes_hw.backends import FloatBackend, FloatParams, WeightBackend
from grapes_hw.backends.fixed_point import FixedParams, FixedPointBackend
from grapes_hw.backends.noise import NoiseParams, NoisyBackend, wrap_with_noise
from grapes_hw.backends.registry import device_model_from_dict, load_device_model
from grapes_hw.cli.main import main
from grapes_hw.data.datasets import load_dataset
from grapes_hw.errors import ConfigError
from grapes_hw.functional.grapes import GrapesParameters
from grapes_hw.rules.credit import BP
from grapes_hw.rules.learner import Learner
from grapes_hw.rules.optim import SGD, Momentum
from grapes_hw.training.config import TrainConfig
from grapes_hw.training.driver import build_network
from grapes_hw.training.train import run

SHAPE = (200, 300)


def he(shape=SHAPE, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) * 2 - 1) * math.sqrt(6.0 / shape[1])


def noisy(kind="float", seed=0, w=None, **noise) -> NoisyBackend:
    inner = (FloatBackend(SHAPE, FloatParams()) if kind == "float"
             else FixedPointBackend(SHAPE, FixedParams(bits=16 if kind == "fixed16" else 8),
                                    seed=seed))
    b = wrap_with_noise(inner, NoiseParams(**noise), seed)
    b.program(he() if w is None else w)
    return b


def test_wrapper_implements_the_protocol():
    b = noisy(read_sigma=0.1)
    assert isinstance(b, WeightBackend)
    assert b.memory() == b.inner.memory()
    assert wrap_with_noise(b.inner, None, 0) is b.inner

    from grapes_hw.backends.base import Abilities

    class NoStore:  # declares no stored()/store(w)
        shape = (2, 2)
        abilities = Abilities()

    with pytest.raises(TypeError, match="stored"):
        wrap_with_noise(NoStore(), NoiseParams(), 0)


# ---- reference scales ---------------------------------------------------------------------------
def test_reference_scale_float_is_initial_max_abs_fixed_is_w_max():
    w = he()
    assert noisy("float", w=w).ref() == pytest.approx(float(w.abs().max()))
    f = noisy("fixed8", w=w)
    assert f.ref() == pytest.approx(f.inner.w_max)


# ---- read noise ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["float", "fixed8"])
def test_read_noise_statistics(kind):
    b = noisy(kind, read_sigma=0.05)
    clean = b.stored().clone()
    sigma = 0.05 * b.ref()
    reads = torch.stack([b.read() - clean for _ in range(20)])
    assert abs(float(reads.std()) / sigma - 1) < 0.02
    assert abs(float(reads.mean())) < 0.01 * sigma
    assert not torch.equal(reads[0], reads[1])  # fresh at every read
    assert torch.equal(b.stored(), clean)  # reading never changes the stored weights
    # forward: per output the noise is N(0, sigma^2 ||x||^2), fresh per call
    x = torch.ones(4, SHAPE[1])
    ys = torch.stack([b.forward(x) - x @ clean.T for _ in range(10)])
    assert abs(float(ys.std()) / (sigma * math.sqrt(SHAPE[1])) - 1) < 0.05
    d = torch.ones(4, SHAPE[0])
    bs = torch.stack([b.backward(d) - d @ clean for _ in range(10)])
    assert abs(float(bs.std()) / (sigma * math.sqrt(SHAPE[0])) - 1) < 0.05
    # one read per call: the same noise matrix for every row of the batch
    assert torch.allclose(ys[0, 0], ys[0, 1])


def test_abs_sums_noisy_unless_ideal():
    b = noisy("fixed8", read_sigma=0.1)
    clean = b.inner.abs_sums(1)
    assert torch.equal(b.abs_sums(1, ideal=True), clean)
    a1, a2 = b.abs_sums(1), b.abs_sums(1)
    assert not torch.equal(a1, a2) and not torch.equal(a1, clean)
    # |W + N| sums exceed |W| sums on average (noise adds magnitude)
    assert float(a1.mean()) > float(clean.mean())


# ---- programming noise --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["float", "fixed16"])
def test_programming_noise_statistics(kind):
    w = he() * 0.5  # inside the fixed-point range even with noise
    b = noisy(kind, w=w, program_sigma=0.1)
    diff = b.stored() - w
    assert abs(float(diff.std()) / (0.1 * b.ref()) - 1) < 0.02
    assert abs(float(diff.mean())) < 0.005 * b.ref()
    again = b.stored().clone()
    b.increment(torch.zeros(SHAPE))  # applied once, at programming only
    assert torch.equal(b.stored(), again)


# ---- write noise --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["float", "fixed16"])
def test_write_noise_is_relative_to_the_update(kind):
    b = noisy(kind, w=he() * 0.5, write_sigma=0.1)
    before = b.stored().clone()
    dw = torch.zeros(SHAPE)
    dw[:100] = 0.01  # 100 of the 200 rows get a change, the others none
    b.increment(dw)
    ratio = (b.stored() - before)[:100] / 0.01
    assert abs(float(ratio.mean()) - 1) < 0.005
    assert abs(float(ratio.std()) / 0.1 - 1) < 0.05
    assert torch.equal(b.stored()[100:], before[100:])  # unchanged cells get no write noise
    # the native update path too
    b2 = noisy(kind, w=he() * 0.5, write_sigma=0.1)
    x = torch.ones(1, SHAPE[1])
    d = torch.zeros(1, SHAPE[0])
    d[0, :100] = -0.01
    before = b2.stored().clone()
    b2.update(x, d, lr=1.0)
    ratio = (b2.stored() - before)[:100] / 0.01
    assert abs(float(ratio.std()) / 0.1 - 1) < 0.05


def test_no_write_noise_means_exact_writes():
    b = noisy("float", write_sigma=0.0, read_sigma=0.05)
    before = b.stored().clone()
    dw = torch.full(SHAPE, 0.01)
    b.increment(dw)
    assert torch.equal(b.stored(), before + dw)


# ---- stuck cells --------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["zero", "max", "min", "random_end"])
@pytest.mark.parametrize("kind", ["float", "fixed8"])
def test_stuck_cells_fraction_and_values(kind, value):
    b = noisy(kind, stuck_fraction=0.05, stuck_value=value, seed=3)
    mask = b.stuck_mask
    frac = float(mask.double().mean())
    assert abs(frac - 0.05) < 0.005
    vals = b.stored()[mask]
    r = b.ref()
    if value == "zero":
        assert torch.all(vals == 0)
    elif value == "max":
        assert torch.allclose(vals, torch.full_like(vals, r))
    elif value == "min":
        assert torch.allclose(vals, torch.full_like(vals, -r))
    else:
        assert torch.allclose(vals.abs(), torch.full_like(vals, r))
        assert 0.4 < float((vals > 0).double().mean()) < 0.6
    # writes cannot move them; other cells do move
    before = b.stored().clone()
    b.increment(torch.full(SHAPE, 0.01))
    b.update(torch.rand(8, SHAPE[1]), torch.randn(8, SHAPE[0]), 0.1)
    assert torch.equal(b.stored()[mask], before[mask])
    assert not torch.equal(b.stored()[~mask], before[~mask])


@pytest.mark.parametrize("backend, optimizer", [("fixed8-stuck1", "sgd"),
                                                ("fixed8-stuck1", "momentum")])
def test_stuck_cells_never_change_through_training(backend, optimizer):
    data = load_dataset("digits")
    x = torch.from_numpy(data.x_train).float()
    y = torch.from_numpy(data.y_train).long()
    cfg = TrainConfig.from_flat(dataset="digits", layers=(128, 128), seed=0)
    net = build_network(cfg, load_device_model(backend), x.shape[1], 10)
    opt = SGD() if optimizer == "sgd" else Momentum(0.9)
    learner = Learner(net, BP(net), GrapesParameters(mode="propagating"), opt)
    masks = [layer.backend.stuck_mask for layer in net.layers]
    before = [layer.backend.stored().clone() for layer in net.layers]
    assert all(int(m.sum()) > 0 for m in masks)
    for b in range(0, 640, 64):
        learner.step(x[b:b + 64], y[b:b + 64], 0.1 if optimizer == "sgd" else 0.01)
    for layer, m, w0 in zip(net.layers, masks, before, strict=True):
        w = layer.backend.stored()
        assert torch.equal(w[m], w0[m])
        assert torch.allclose(w[m].abs(), torch.full_like(w[m], layer.backend.ref()))
        assert not torch.equal(w[~m], w0[~m])


# ---- seeds --------------------------------------------------------------------------------------
def test_same_seed_same_noise_different_seed_differs():
    a, b, c = (noisy("fixed8", seed=s, read_sigma=0.05, program_sigma=0.05,
                     stuck_fraction=0.02) for s in (1, 1, 2))
    assert torch.equal(a.stored(), b.stored()) and torch.equal(a.read(), b.read())
    assert not torch.equal(a.stored(), c.stored())
    assert not torch.equal(a.stuck_mask, c.stuck_mask)


@pytest.mark.parametrize("backend", ["fixed8-read5", "fixed8-write2", "float32-read5",
                                     "fixed8-stuck1"])
def test_same_seed_same_run_bit_for_bit(backend):
    cfg = dict(dataset="digits", layers=(32,), epochs=2, backend=backend, grapes="propagating")
    a, b = run(TrainConfig.from_flat(seed=3, **cfg)), run(TrainConfig.from_flat(seed=3, **cfg))
    c = run(TrainConfig.from_flat(seed=4, **cfg))

    def trace(r):
        return [(e["train_loss"], e["test_acc"], e["pulses"]) for e in r["epochs"]]

    assert trace(a) == trace(b)
    assert trace(a) != trace(c)


# ---- configuration ------------------------------------------------------------------------------
def with_noise(**noise):
    return {"name": "t", "description": "d", "backend": "fixed", "fixed": {"bits": 8},
            "noise": noise}


@pytest.mark.parametrize("noise, key", [
    ({"read_sigma": -0.1}, "noise.read_sigma"),
    ({"write_sigma": -1}, "noise.write_sigma"),
    ({"program_sigma": float("nan")}, "noise.program_sigma"),
    ({"read_sigma": "0.1"}, "noise.read_sigma"),
    ({"read_sigm": 0.1}, "noise.read_sigm"),
    ({"stuck_fraction": 1.5}, "noise.stuck_fraction"),
    ({"stuck_value": "high"}, "noise.stuck_value"),
])
def test_bad_noise_tables_name_the_key(noise, key):
    with pytest.raises(ConfigError) as e:
        device_model_from_dict(with_noise(**noise))
    assert e.value.field == key


def test_cli_exits_2_on_negative_sigma(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\ndescription = "d"\nbackend = "float"\n'
                   '[noise]\nread_sigma = -0.05\n')
    assert main(["train", "--backend", str(bad), "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "noise.read_sigma" in err and "Traceback" not in err
