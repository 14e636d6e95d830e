"""End to end on the embedded digits data, divergence handling and the plateau fit."""

from __future__ import annotations

import numpy as np
import pytest

from grapes_hw.training.config import TrainConfig
from grapes_hw.training.metrics import fit_plateau, plateau
from grapes_hw.training.train import run


@pytest.mark.parametrize("optimizer, grapes, lr", [
    ("sgd", "off", 0.1),
    ("momentum", "off", 0.01),
    ("nag", "off", 0.01),
    ("sgd", "propagating", 0.1),
    ("sgd", "local", 0.1),
    ("momentum", "propagating", 0.01),
])
def test_digits_3x256_reaches_95_percent(optimizer, grapes, lr):
    r = run(TrainConfig.from_flat(dataset="digits", layers=(256, 256, 256), optimizer=optimizer,
                        grapes=grapes, lr=lr, epochs=10, seed=0))
    assert r["status"] == "ok"
    assert r["best_test_acc"] >= 0.95, r["best_test_acc"]
    assert r["optimizer_state_bytes"] == (0 if optimizer == "sgd" else
                                          4 * (64 * 256 + 2 * 256 * 256 + 256 * 10))


def test_divergence_stops_cleanly_and_is_marked():
    # lr 1e6 (the largest accepted) overflows float32 within the first epoch (lr 1e4 merely
    # kills every ReLU and leaves a finite loss of ln 10, which is not divergence).
    r = run(TrainConfig.from_flat(dataset="digits", layers=(64, 64), optimizer="momentum", lr=1e6,
                        momentum=0.99, epochs=20, seed=0))
    assert r["status"] == "diverged"
    assert 1 <= r["diverged_epoch"] < 20
    assert len(r["epochs"]) == r["diverged_epoch"]  # stopped there, did not run 20 epochs
    assert r["epochs"][-1]["train_loss"] is None and r["best_test_acc"] is None
    assert r["final_test_acc"] is None


def test_same_seed_same_run_different_seed_differs():
    cfg = dict(dataset="digits", layers=(32,), epochs=2, grapes="propagating")
    a, b = run(TrainConfig.from_flat(seed=3, **cfg)), run(TrainConfig.from_flat(seed=3, **cfg))
    c = run(TrainConfig.from_flat(seed=4, **cfg))
    assert [e["train_loss"] for e in a["epochs"]] == [e["train_loss"] for e in b["epochs"]]
    assert [e["train_loss"] for e in a["epochs"]] != [e["train_loss"] for e in c["epochs"]]


def test_lr_matched_scales_lr_by_mean_factor_at_init():
    r = run(TrainConfig.from_flat(dataset="digits", layers=(64, 64), epochs=1, lr=0.1,
                                  lr_matched=True))
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


def test_lr_matched_equals_plain_sgd_at_the_scaled_lr():
    """--lr-matched is plain SGD at lr times the mean GRAPES factor at initialisation: the
    same run as SGD given that lr, step for step, and the factor is computed independently
    here from the initial weights."""
    import torch

    from grapes_hw.backends.registry import load_device_model
    from grapes_hw.functional.grapes import mean_factor
    from grapes_hw.rules.credit import make_credit
    from grapes_hw.training.driver import build_network

    cfg = TrainConfig.from_flat(dataset="digits", layers=(64, 32), epochs=2, lr=0.1,
                                lr_matched=True,
                      seed=2)
    net = build_network(cfg, load_device_model("float32"), 64, 10)
    credit = make_credit("bp", net, torch.Generator().manual_seed(0))
    rows = [layer.backend.read().abs().sum(1) for layer in net.layers[:-1]]
    scale = mean_factor(rows, 1.0)
    assert scale == pytest.approx(mean_factor([credit.importance(l) for l in range(2)], 1.0))
    matched = run(cfg)
    plain = run(TrainConfig.from_flat(dataset="digits", layers=(64, 32), epochs=2, lr=0.1 * scale,
                            seed=2))
    assert matched["config"]["lr_scale"] == pytest.approx(scale, rel=1e-6)
    assert [e["train_loss"] for e in matched["epochs"]] == pytest.approx(
        [e["train_loss"] for e in plain["epochs"]], rel=1e-5)
    assert matched["best_test_acc"] == pytest.approx(plain["best_test_acc"], abs=1e-9)


def test_ctrl_c_mid_epoch_keeps_the_finished_epochs(monkeypatch):
    """A KeyboardInterrupt in the middle of epoch 2: status interrupted, epoch 1 complete,
    epoch 2 recorded as partial."""
    from grapes_hw.rules import learner as learning

    calls = {"n": 0}
    step = learning.Learner.step

    def interrupting(self, x, y, lr):
        calls["n"] += 1
        if calls["n"] == 23 + 5:  # digits: 1437 training samples = 23 batches of 64
            raise KeyboardInterrupt
        return step(self, x, y, lr)

    monkeypatch.setattr(learning.Learner, "step", interrupting)
    r = run(TrainConfig.from_flat(dataset="digits", layers=(32,), epochs=5, seed=0))
    assert r["status"] == "interrupted"
    assert [e["epoch"] for e in r["epochs"]] == [1, 2]
    assert "partial" not in r["epochs"][0] and r["epochs"][1]["partial"] is True
    assert r["epochs"][0]["test_acc"] is not None and r["best_test_acc"] is not None


def test_one_driver_for_every_model(monkeypatch):
    """mlp, snu, ssnu and cnn runs all go through runloop.run_model and its one epoch loop,
    and give results with the same keys."""
    from grapes_hw.training import driver as runloop
    from grapes_hw.training.config import MODELS

    loops = []
    real = runloop.train_loop

    def counting(*a, **kw):
        loops.append(a[2].network.model)
        return real(*a, **kw)

    monkeypatch.setattr(runloop, "train_loop", counting)
    keys = {}
    for model in MODELS:
        extra = ({"conv": "4:3"} if model == "cnn" else
                 {"time_steps": 4, "test_time_steps": 4} if model in ("snu", "ssnu") else {})
        r = run(TrainConfig.from_flat(dataset="digits", model=model, layers=(16,), epochs=1,
                                      train_subset=256, **extra))
        assert r["status"] == "ok", model
        keys[model] = set(r)
    assert loops == list(MODELS)
    assert len({frozenset(k) for k in keys.values()}) == 1


def test_results_record_the_source_commit():
    """Every result's versions carry the commit of the checkout the code came from, so two
    results of one run key made by different code can be told apart."""
    import subprocess
    from pathlib import Path

    from grapes_hw.training.driver import versions

    root = Path(__file__).resolve().parent.parent
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    commit = versions()["git"]
    assert commit.split("+")[0] == head.stdout.strip()[:12]
    assert commit.endswith("+dirty") == bool(subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
         str(root / "grapes_hw")], capture_output=True, text=True).stdout.strip())
