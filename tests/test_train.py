"""End to end on the embedded digits data, divergence handling and the plateau fit."""

from __future__ import annotations

import numpy as np
import pytest

from grapes_hw.metrics import fit_plateau, plateau
from grapes_hw.train import TrainConfig, run


@pytest.mark.parametrize("optimizer, grapes, lr", [
    ("sgd", "off", 0.1),
    ("momentum", "off", 0.01),
    ("nag", "off", 0.01),
    ("sgd", "propagating", 0.1),
    ("sgd", "local", 0.1),
    ("momentum", "propagating", 0.01),
])
def test_digits_3x256_reaches_95_percent(optimizer, grapes, lr):
    r = run(TrainConfig(dataset="digits", layers=(256, 256, 256), optimizer=optimizer,
                        grapes=grapes, lr=lr, epochs=10, seed=0))
    assert r["status"] == "ok"
    assert r["best_test_acc"] >= 0.95, r["best_test_acc"]
    assert r["optimizer_state_bytes"] == (0 if optimizer == "sgd" else
                                          4 * (64 * 256 + 2 * 256 * 256 + 256 * 10))


def test_divergence_stops_cleanly_and_is_marked():
    # lr 1e12 overflows float32 within the first epoch (lr 1e4 merely kills every ReLU
    # and leaves a finite loss of ln 10, which is not divergence).
    r = run(TrainConfig(dataset="digits", layers=(64, 64), optimizer="momentum", lr=1e12,
                        momentum=0.99, epochs=20, seed=0))
    assert r["status"] == "diverged"
    assert 1 <= r["diverged_epoch"] < 20
    assert len(r["epochs"]) == r["diverged_epoch"]  # stopped there, did not run 20 epochs
    assert r["epochs"][-1]["train_loss"] is None and r["best_test_acc"] is None
    assert r["final_test_acc"] is None


def test_same_seed_same_run_different_seed_differs():
    cfg = dict(dataset="digits", layers=(32,), epochs=2, grapes="propagating")
    a, b = run(TrainConfig(seed=3, **cfg)), run(TrainConfig(seed=3, **cfg))
    c = run(TrainConfig(seed=4, **cfg))
    assert [e["train_loss"] for e in a["epochs"]] == [e["train_loss"] for e in b["epochs"]]
    assert [e["train_loss"] for e in a["epochs"]] != [e["train_loss"] for e in c["epochs"]]


def test_lr_matched_scales_lr_by_mean_factor_at_init():
    r = run(TrainConfig(dataset="digits", layers=(64, 64), epochs=1, lr=0.1, lr_matched=True))
    scale = r["config"]["lr_scale"]
    assert 1.0 < scale <= 2.0
    assert r["config"]["lr_effective"] == pytest.approx(0.1 * scale)


def test_plateau_fit_recovers_parameters():
    ep = np.arange(1, 31)
    acc = plateau(ep, 0.9, 2.5)
    fit = fit_plateau(acc)
    assert fit["ok"]
    assert fit["max_accuracy"] == pytest.approx(0.9, rel=1e-4)
    assert fit["slowness"] == pytest.approx(2.5, rel=1e-4)
    # faster curve -> smaller slowness
    assert fit_plateau(plateau(ep, 0.9, 0.5))["slowness"] < fit["slowness"]


def test_plateau_fit_needs_two_points():
    fit = fit_plateau([0.5])
    assert not fit["ok"] and fit["slowness"] is None
