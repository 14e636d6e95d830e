"""Per-optimizer default learning rates: an unset lr means the optimizer's own default, every
run path (MLP, SNU, continual) trains at it, and the result records the rate and why."""

from __future__ import annotations

import math

import pytest

from grapes_hw.config import DEFAULT_LR, default_lr
from grapes_hw.errors import ConfigError
from grapes_hw.training.config import TrainConfig
from grapes_hw.training.train import run


def test_the_documented_defaults():
    assert DEFAULT_LR == {"sgd": 0.1, "momentum": 0.01, "nag": 0.01, "rmsprop": 0.001,
                          "adam": 0.001}


@pytest.mark.parametrize("optimizer", sorted(DEFAULT_LR))
def test_unset_lr_resolves_to_the_optimizer_default(optimizer):
    cfg = TrainConfig.from_flat(optimizer=optimizer)
    assert cfg.rule.lr is None
    cfg.check()  # None is a valid setting
    lr, source = cfg.resolved_lr()
    assert lr == default_lr(optimizer) and source == f"default for {optimizer}"
    assert isinstance(lr, float) and math.isfinite(lr) and lr > 0


def test_given_lr_wins():
    assert TrainConfig.from_flat(optimizer="adam", lr=0.05).resolved_lr() == (0.05, "given")
    assert TrainConfig.from_flat(lr=1).resolved_lr() == (1.0, "given")


@pytest.mark.parametrize("lr", [0.0, -0.1, math.nan, math.inf, True, "0.1"])
def test_bad_lr_names_the_option_and_the_default(lr):
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_flat(lr=lr).check()
    assert e.value.field == "lr"  # the Python field; the CLI says --lr
    assert "sgd 0.1" in e.value.message and "adam 0.001" in e.value.message


def test_unknown_optimizer_has_no_default():
    with pytest.raises(ConfigError) as e:
        default_lr("adagrad")
    assert e.value.field == "optimizer" and "rmsprop" in e.value.message


def test_mlp_run_trains_at_and_records_the_default():
    r = run(TrainConfig.from_flat(dataset="digits", layers=(16,), epochs=1, train_subset=200,
                        optimizer="rmsprop"))
    c = r["config"]
    assert (c["lr"], c["lr_source"], c["lr_effective"]) == (0.001, "default for rmsprop", 0.001)


def test_lr_matched_scales_the_default():
    r = run(TrainConfig.from_flat(dataset="digits", layers=(16, 16), epochs=1, train_subset=200,
                        lr_matched=True))
    c = r["config"]
    assert c["lr"] == 0.1 and c["lr_source"] == "default for sgd"
    assert c["lr_scale"] > 1 and c["lr_effective"] == pytest.approx(0.1 * c["lr_scale"])


def test_snu_run_records_the_default():
    r = run(TrainConfig.from_flat(dataset="digits", model="snu", layers=(16,), epochs=1,
                                  train_subset=100,
                        time_steps=4, test_time_steps=4, optimizer="momentum"))
    c = r["config"]
    assert (c["lr"], c["lr_source"], c["lr_effective"]) == (0.01, "default for momentum", 0.01)


def test_continual_run_records_the_default():
    from grapes_hw.data.datasets import load_dataset
    from grapes_hw.training.continual import run_sequence

    data = load_dataset("digits", train_subset=100)
    out = run_sequence(TrainConfig.from_flat(dataset="digits", layers=(16,), optimizer="adam"),
                       data,
                       n_tasks=2, k_pixels=10, epochs_per_task=1)
    assert out["lr_effective"] == 0.001
    assert out["config"]["lr"] == 0.001 and out["config"]["lr_source"] == "default for adam"
