"""The plateau fit's acceptance rules: each absurd fit is rejected, a clean curve accepted;
results say what their pulses count and carry the verdict of the fit."""

from __future__ import annotations

import numpy as np
import pytest

from grapes_hw.training.metrics import (
    SLOWNESS_ZERO,
    chance_level,
    fit_plateau,
    plateau,
    plateau_check,
)


def test_clean_curve_is_accepted_with_its_parameters():
    ep = np.arange(1, 11)
    fit = fit_plateau(plateau(ep, 0.9, 1.5), n_classes=10)
    assert fit["ok"] and fit["reason"] == ""
    assert fit["max_accuracy"] == pytest.approx(0.9, rel=1e-5)
    assert fit["slowness"] == pytest.approx(1.5, rel=1e-5)


def test_noisy_learning_curve_is_accepted():
    ep = np.arange(1, 21)
    noise = np.random.default_rng(0).normal(0, 0.005, ep.size)
    fit = fit_plateau(plateau(ep, 0.85, 0.8) + noise, n_classes=10)
    assert fit["ok"], fit["reason"]
    assert fit["slowness"] == pytest.approx(0.8, abs=0.1)


def test_fewer_than_three_epochs_rejected():
    for curve in ([0.5], [0.5, 0.6], [0.5, None, 0.7]):
        fit = fit_plateau(curve)
        assert not fit["ok"] and fit["slowness"] is None
        assert "need at least 3 epochs" in fit["reason"]


def test_max_accuracy_above_one_rejected():
    # A curve still rising linearly after 5 epochs (the `--model snu --epochs 5` case of the
    # issue): the fit extrapolates a plateau far above 100%.
    curve = [0.20, 0.30, 0.40, 0.50, 0.60]
    fit = fit_plateau(curve, n_classes=10)
    assert fit["max_accuracy"] > 1
    assert not fit["ok"] and "max accuracy" in fit["reason"]


def test_slowness_beyond_ten_times_the_epochs_rejected():
    curve = plateau(np.arange(1, 6), 0.95, 60.0)  # max accuracy < 1, slowness 60 > 10 x 5
    fit = fit_plateau(curve)
    # (an ill-conditioned fit: 5 points on the nearly straight start of the curve)
    assert fit["max_accuracy"] == pytest.approx(0.95, rel=0.01) and fit["max_accuracy"] < 1
    assert fit["slowness"] == pytest.approx(60.0, rel=0.01)
    assert not fit["ok"] and "beyond 10x the 5 epochs" in fit["reason"]
    # the same curve run for 10 epochs: slowness 60 is within 10x, accepted
    longer = fit_plateau(plateau(np.arange(1, 11), 0.95, 60.0))
    assert longer["ok"] and longer["slowness"] == pytest.approx(60.0, rel=0.01)


def test_negative_slowness_rejected():
    # curve_fit is bounded at 0, so a negative slowness only comes from a stored fit of other
    # code: the re-check rejects it.
    curve = plateau(np.arange(1, 11), 0.9, 1.0)
    assert "negative slowness" in plateau_check(0.9, -0.5, curve, n_classes=10)
    assert plateau_check(0.9, 1.0, curve, n_classes=10) == ""


def test_zero_slowness_of_a_curve_that_did_not_learn_rejected():
    # flat at chance: the fit puts slowness on its 0 bound; the curve did not learn
    flat = [0.1] * 10
    fit = fit_plateau(flat, n_classes=10)
    assert fit["slowness"] < SLOWNESS_ZERO
    assert not fit["ok"] and "chance level" in fit["reason"]
    # flat above chance (no rise after epoch 1): slowness 0 within rounding, rejected
    for level in (0.3, 0.5, 0.8, 0.95):
        fit = fit_plateau([level] * 10, n_classes=10)
        assert fit["slowness"] < SLOWNESS_ZERO
        assert not fit["ok"] and "0 within rounding" in fit["reason"]
    # falling or erratic curves: also on the bound, also rejected
    for curve in ([0.78, 0.786, 0.75, 0.68, 0.63],
                  [0.831, 0.867, 0.196, 0.898, 0.822, 0.842, 0.253, 0.642, 0.931, 0.931]):
        fit = fit_plateau(curve, n_classes=10)
        assert fit["slowness"] < SLOWNESS_ZERO
        assert not fit["ok"] and "0 within rounding" in fit["reason"]


def test_curve_at_chance_rejected_whatever_its_slowness():
    assert chance_level(10) == pytest.approx(0.15)
    noisy = [0.10, 0.11, 0.12, 0.13, 0.12, 0.13, 0.14, 0.13, 0.14, 0.14]
    fit = fit_plateau(noisy, n_classes=10)
    assert fit["slowness"] > SLOWNESS_ZERO  # a "fit" that looks like a measurement
    assert not fit["ok"] and "did not learn" in fit["reason"]
    # without n_classes the chance rule is not applied
    assert fit_plateau(noisy)["ok"]


def test_result_records_unit_of_pulses_and_the_fit_verdict():
    from grapes_hw.training.config import TrainConfig
    from grapes_hw.training.train import run

    r = run(TrainConfig.from_flat(dataset="digits", layers=(16,), epochs=2, seed=0))
    assert r["pulses_unit"] == "writes" and r["pulses_total"] > 0
    assert "pulses_unit" not in r["memory"]
    assert r["dataset"]["n_classes"] == 10
    assert not r["plateau_fit"]["ok"] and "3 epochs" in r["plateau_fit"]["reason"]
    assert r["slowness"] is None
    r = run(TrainConfig.from_flat(dataset="digits", layers=(16,), epochs=1, backend="fixed8",
                                  bias=True))
    assert r["pulses_unit"] == "cells changed + writes (bias)"
    r = run(TrainConfig.from_flat(dataset="digits", layers=(16,), epochs=1,
                                  backend="float32-read2"))
    assert r["pulses_unit"] == "writes"  # NoisyBackend forwards its inner backend's unit


def test_backends_declare_their_pulse_unit():
    from grapes_hw.backends.analog.array import SplitAnalogBackend
    from grapes_hw.backends.analog.tile import AnalogTileBackend
    from grapes_hw.backends.fixed_point import FixedPointBackend
    from grapes_hw.backends.float_backend import FloatBackend

    assert FloatBackend.pulse_unit == "writes"
    assert FixedPointBackend.pulse_unit == "cells changed"
    assert AnalogTileBackend.pulse_unit == SplitAnalogBackend.pulse_unit == \
        "estimated programming steps"
