"""Fixed-point backend: integer storage, rounding, saturation, accounting, training, config."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from grapes_hw.backends.fixed_point import (
    FixedParams,
    FixedPointBackend,
    VelocityFormat,
    quantize_symmetric,
)
from grapes_hw.backends.registry import device_model_from_dict, load_device_model
from grapes_hw.cli.main import main
from grapes_hw.errors import ConfigError
from grapes_hw.training.config import TrainConfig
from grapes_hw.training.train import run


def he(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    lim = math.sqrt(6.0 / shape[1])
    return (torch.rand(shape, generator=g) * 2 - 1) * lim


def fixed(shape=(64, 100), seed=0, **kw) -> FixedPointBackend:
    b = FixedPointBackend(shape, FixedParams(**kw), seed=seed)
    b.program(torch.zeros(shape))
    return b


# ---- storage ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits, dtype", [(2, torch.int8), (4, torch.int8), (8, torch.int8),
                                         (9, torch.int16), (16, torch.int16)])
def test_integer_storage_dtype_and_dequantised_read(bits, dtype):
    b = FixedPointBackend((32, 50), FixedParams(bits=bits), seed=1)
    b.program(he((32, 50)))
    assert b.q.dtype == dtype
    qmax = 2 ** (bits - 1) - 1
    assert int(b.q.abs().max()) <= qmax
    assert b.step == pytest.approx(b.w_max / qmax)
    assert torch.equal(b.read(), b.q.to(torch.float32) * np.float32(b.step))
    assert b.memory().bits_per_weight == bits
    assert b.memory().digital_bytes == (32 * 50 * bits + 7) // 8


def test_auto_range_is_factor_times_he_limit():
    b = FixedPointBackend((256, 784), FixedParams(bits=8, w_max_factor=2.0))
    assert b.w_max == pytest.approx(2 * math.sqrt(6 / 784))
    b = FixedPointBackend((256, 256), FixedParams(bits=8, w_max=0.5))
    assert b.w_max == 0.5 and b.step == pytest.approx(0.5 / 127)


def test_abs_sums_are_exact_integer_sums_times_step():
    b = FixedPointBackend((40, 70), FixedParams(bits=6, rounding="nearest"))
    b.program(he((40, 70)))
    for dim in (0, 1):
        exact = b.q.to(torch.int64).abs().sum(dim).to(torch.float64) * b.step
        assert torch.allclose(b.abs_sums(dim).double(), exact, rtol=1e-6, atol=0)
        assert torch.allclose(b.abs_sums(dim), b.read().abs().sum(dim), rtol=1e-5)


# ---- rounding -----------------------------------------------------------------------------------
@pytest.mark.parametrize("frac", [0.1, 0.3, 0.5, 0.77, -0.3, -0.9])
def test_stochastic_rounding_is_unbiased(frac):
    # 200k cells each get one increment of `frac` steps: E[q] = frac. Nearest would give
    # round(frac), floor would give floor(frac): both miss by >= 0.1, far outside 0.01.
    b = fixed((400, 500), bits=8, rounding="stochastic", seed=3)
    b.increment(torch.full(b.shape, frac * b.step))
    mean = float(b.q.double().mean())
    assert abs(mean - frac) < 0.01, mean
    # and repeated increments accumulate without drift
    for _ in range(19):
        b.increment(torch.full(b.shape, frac * b.step))
    assert abs(float(b.q.double().mean()) - 20 * frac) < 0.05


def test_stochastic_rounding_unbiased_for_a_single_cell_over_time():
    b = fixed((1, 1), bits=8, rounding="stochastic", seed=5)
    total = 0
    for _ in range(4000):
        b.program(torch.zeros(1, 1))
        b.increment(torch.full((1, 1), 0.25 * b.step))
        total += int(b.q[0, 0])
    assert abs(total / 4000 - 0.25) < 0.03


def test_nearest_rounding_is_idempotent():
    b = FixedPointBackend((30, 40), FixedParams(bits=5, rounding="nearest"))
    b.program(he((30, 40)))
    q0 = b.q.clone()
    b.program(b.read().clone())  # rounding an on-grid value again changes nothing
    assert torch.equal(b.q, q0)
    b.increment(torch.zeros(b.shape))
    assert torch.equal(b.q, q0) and b.pulses() == 0
    # values within half a step of the grid come back to the same integers
    b.program(b.read() + 0.49 * b.step * (torch.rand(b.shape) * 2 - 1))
    assert torch.equal(b.q, q0)


def test_nearest_rounds_to_nearest():
    b = fixed((1, 4), bits=8, rounding="nearest")
    b.increment(torch.tensor([[0.4, 0.6, -0.4, -1.6]]) * b.step)
    assert b.q.tolist() == [[0, 1, 0, -2]]


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_saturation_at_the_range_ends(rounding):
    b = fixed((20, 30), bits=6, rounding=rounding)
    b.increment(torch.full(b.shape, 1e3))
    assert int(b.q.min()) == int(b.q.max()) == 31
    assert torch.allclose(b.read(), torch.full(b.shape, b.w_max))
    x = torch.ones(8, 30)
    b.update(x, torch.ones(8, 20), lr=1e6)  # W -= huge
    assert int(b.q.min()) == int(b.q.max()) == -31
    b.program(torch.full(b.shape, -5.0))
    assert int(b.q.min()) == -31


def test_pulses_count_changed_cells():
    b = fixed((10, 10), bits=8, rounding="nearest")
    dw = torch.zeros(b.shape)
    dw[0, :7] = 3 * b.step
    dw[5, 2] = 0.2 * b.step  # under half a step: no change
    b.increment(dw)
    assert b.pulses() == 7
    b.increment(torch.full(b.shape, 1e3))  # everything saturates at +qmax
    assert b.pulses() == 7 + 100
    b.increment(torch.full(b.shape, 1e3))  # already saturated: nothing changes
    assert b.pulses() == 107


def test_update_matches_float_reference_at_16_bits():
    g = torch.Generator().manual_seed(0)
    b = FixedPointBackend((50, 60), FixedParams(bits=16, rounding="nearest", w_max=1.0))
    w0 = he((50, 60))
    b.program(w0)
    x, d = torch.rand(16, 60, generator=g), torch.randn(16, 50, generator=g)
    b.update(x, d, lr=0.1)
    ref = w0 - 0.1 / 16 * d.T @ x
    assert (b.read() - ref).abs().max() <= b.step  # one step of rounding (program + update)


def test_small_updates_lost_with_nearest_but_not_with_stochastic():
    # lr such that every |lr/B * delta^T x| < step/2: nearest never moves, stochastic does
    g = torch.Generator().manual_seed(1)
    x, d = torch.rand(64, 100, generator=g), torch.randn(64, 64, generator=g)
    grad = (d.T @ x / 64).abs().max()
    res = {}
    for rounding in ("nearest", "stochastic"):
        b = FixedPointBackend((64, 100), FixedParams(bits=8, rounding=rounding), seed=2)
        b.program(he((64, 100)))
        lr = 0.4 * b.step / float(grad)
        q0 = b.q.clone()
        for _ in range(50):
            b.update(x, d, lr)
        res[rounding] = (torch.equal(b.q, q0), b.pulses())
    assert res["nearest"] == (True, 0)
    assert res["stochastic"][0] is False and res["stochastic"][1] > 1000


def test_training_with_sub_half_step_lr_never_moves_nearest_weights():
    cfg = dict(dataset="digits", layers=(64,), epochs=1, lr=1e-5, seed=0)
    assert run(TrainConfig.from_flat(backend="fixed8-nearest", **cfg))["pulses_total"] == 0
    assert run(TrainConfig.from_flat(backend="fixed8", **cfg))["pulses_total"] > 0


# ---- reproducibility and laziness ---------------------------------------------------------------
def test_same_seed_same_bits_different_seed_differs():
    def trained(seed):
        b = FixedPointBackend((64, 80), FixedParams(bits=6), seed=seed)
        b.program(he((64, 80)))
        g = torch.Generator().manual_seed(9)
        for _ in range(5):
            b.update(torch.rand(8, 80, generator=g), torch.randn(8, 64, generator=g), 0.05)
        return b.q.clone()

    assert torch.equal(trained(1), trained(1))
    assert not torch.equal(trained(1), trained(2))


def test_kernels_are_not_compiled_at_import():
    code = ("import sys, grapes_hw, grapes_hw.backends.registry, grapes_hw.backends.fixed_point, "
            "grapes_hw.backends.noise, grapes_hw.training.config, grapes_hw.cli.main\n"
            "grapes_hw.backends.registry.load_device_model('fixed8')\n"
            "assert 'numba' not in sys.modules, 'numba imported'\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


# ---- converters ---------------------------------------------------------------------------------
def test_dac_and_adc_quantise_what_the_array_sees():
    b = FixedPointBackend((20, 30), FixedParams(bits=8, dac_bits=3, adc_bits=4), seed=0)
    b.program(he((20, 30)))
    x, d = torch.randn(5, 30), torch.randn(5, 20)
    xq = quantize_symmetric(x, 3)
    for row in xq:  # at most 2*3+1 levels per row, max |x| kept
        assert len(torch.unique(row)) <= 7
    assert torch.allclose(xq.abs().amax(1), x.abs().amax(1))
    assert torch.allclose(b.forward(x), xq @ b.read().T)
    assert torch.allclose(b.backward(d), quantize_symmetric(d, 4) @ b.read())
    assert not torch.allclose(b.forward(x), x @ b.read().T)


# ---- velocity precision -------------------------------------------------------------------------
def test_velocity_format_grid_and_unbiased_stochastic():
    f = VelocityFormat(6, "nearest")
    v = torch.randn(1000) * 3e-3
    top = float(v.abs().max())
    out = f(v.clone())
    step = 2.0 ** (math.ceil(math.log2(top)) - 5)
    k = out / step
    assert torch.equal(k, k.round()) and float(k.abs().max()) <= 31
    c = torch.full((200_000,), 0.3 * step)
    c[0] = top  # fixes the scale
    s = VelocityFormat(6, "stochastic", seed=1)(c.clone())
    assert abs(float(s[1:].mean()) / step - 0.3) < 0.01
    assert float(VelocityFormat(6, "nearest")(c.clone())[1:].mean()) == 0.0


def test_velocity_bits_counted_and_trains():
    r = run(TrainConfig.from_flat(dataset="digits", layers=(64,), optimizer="momentum", lr=0.01,
                        epochs=3, velocity_bits=8, seed=0))
    n = 64 * 64 + 64 * 10
    assert r["optimizer_state_bytes"] == n  # 8 bits each
    assert r["memory"]["optimizer_state_bytes"] == n
    assert r["best_test_acc"] > 0.85
    r16 = run(TrainConfig.from_flat(dataset="digits", layers=(64,), optimizer="nag", lr=0.01,
                                    epochs=1,
                          velocity_bits=16, velocity_rounding="stochastic", seed=0))
    assert r16["optimizer_state_bytes"] == 2 * n


# ---- accuracy -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_fixed16_trains_digits_within_one_percent_of_float():
    cfg = dict(dataset="digits", layers=(256, 256, 256), epochs=10, lr=0.1, seed=0)
    f = run(TrainConfig.from_flat(backend="float32", **cfg))
    q = run(TrainConfig.from_flat(backend="fixed16", **cfg))
    assert q["status"] == "ok"
    assert q["best_test_acc"] >= f["best_test_acc"] - 0.01, (q["best_test_acc"],
                                                            f["best_test_acc"])
    assert q["memory"]["bits_per_weight"] == 16


# ---- configuration errors -----------------------------------------------------------------------
def model(**fixed):
    return {"name": "t", "description": "d", "backend": "fixed", "fixed": fixed}


@pytest.mark.parametrize("table, key", [
    ({"bits": 1}, "fixed.bits"),
    ({"bits": 17}, "fixed.bits"),
    ({"bits": "8"}, "fixed.bits"),
    ({"bits": 8.0}, "fixed.bits"),
    ({"bitz": 8}, "fixed.bitz"),
    ({"w_max": -1.0}, "fixed.w_max"),
    ({"w_max": "big"}, "fixed.w_max"),
    ({"w_max_factor": 0}, "fixed.w_max_factor"),
    ({"rounding": "up"}, "fixed.rounding"),
    ({"dac_bits": 1}, "fixed.dac_bits"),
    ({"adc_bits": 40}, "fixed.adc_bits"),
])
def test_bad_fixed_tables_name_the_key(table, key):
    with pytest.raises(ConfigError) as e:
        device_model_from_dict(model(**table))
    assert e.value.field == key


def test_good_fixed_table_loads():
    m = device_model_from_dict(model(bits=5, w_max=0.3, rounding="nearest", dac_bits=8))
    assert m.params == FixedParams(bits=5, w_max=0.3, rounding="nearest", dac_bits=8)
    assert load_device_model("fixed8").params.bits == 8


def test_cli_exits_2_on_bad_fixed_model(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\ndescription = "d"\nbackend = "fixed"\n[fixed]\nbits = 20\n')
    assert main(["train", "--backend", str(bad), "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "fixed.bits" in err and "2..16" in err


@pytest.mark.parametrize("args, option", [
    (["--optimizer", "momentum", "--velocity-bits", "1"], "--velocity-bits"),
    (["--optimizer", "momentum", "--velocity-bits", "40"], "--velocity-bits"),
    (["--optimizer", "sgd", "--velocity-bits", "8"], "--velocity-bits"),
    (["--optimizer", "momentum", "--velocity-bits", "x"], "--velocity-bits"),
    (["--optimizer", "momentum", "--velocity-bits", "8", "--velocity-rounding", "up"],
     "--velocity-rounding"),
])
def test_cli_velocity_options_exit_2(args, option, capsys):
    with pytest.raises(SystemExit) as e:
        rc = main(["train", "--epochs", "1", "--quiet", *args])
        raise SystemExit(rc)
    assert e.value.code == 2
    assert option in capsys.readouterr().err


def test_stochastic_rounding_decisions_of_neighbouring_cells_are_uncorrelated():
    # v = 0.5 everywhere: each cell rounds up iff its u >= 1/2. The decisions must look like
    # independent fair coins, across a row (lag 1), down a column (lag n_in) and between writes.
    b = FixedPointBackend((400, 784), FixedParams(bits=8), seed=11)
    ups = []
    for _ in range(2):
        b.program(torch.zeros(b.shape))
        b.increment(torch.full(b.shape, 0.5 * b.step))
        ups.append(b.q.to(torch.float64).flatten())
    a = ups[0]
    assert abs(float(a.mean()) - 0.5) < 0.005
    for lag in (1, 2, 784):
        r = torch.corrcoef(torch.stack([a[:-lag], a[lag:]]))[0, 1]
        assert abs(float(r)) < 0.01, (lag, float(r))
    r = torch.corrcoef(torch.stack(ups))[0, 1]
    assert abs(float(r)) < 0.01
