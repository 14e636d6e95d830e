"""Every shipped device model loads, lists and trains the digits data."""

from __future__ import annotations

import importlib.util

import pytest

from grapes_hw.cli import main
from grapes_hw.devices import list_models, load_device_model
from grapes_hw.train import TrainConfig, run

MODELS = [p.stem for p in list_models()]
# Models that must learn digits in one epoch. Others (e.g. sweep grids down to 2-bit
# round-to-nearest, which by design cannot learn) must load and run cleanly.
MUST_LEARN = ("float32", "fixed16", "fixed8", "fixed6", "fixed4", "fixed8-nearest",
              "float32-read5", "float32-read10", "float32-write2", "fixed8-read5",
              "fixed8-write2", "fixed8-stuck1")


def test_the_issue_models_are_shipped():
    for name in MUST_LEARN:
        assert name in MODELS


@pytest.mark.parametrize("name", MODELS)
def test_shipped_model_loads_and_trains_digits(name):
    m = load_device_model(name)
    assert m.name == name and m.description
    if m.backend == "analog" and importlib.util.find_spec("aihwkit") is None:
        pytest.skip("aihwkit is not installed")
    r = run(TrainConfig(dataset="digits", layers=(64,), epochs=1, lr=0.1, backend=name,
                        seed=0))
    assert r["status"] == "ok"
    assert len(r["epochs"]) == 1 and r["epochs"][0]["train_loss"] is not None
    if name in MUST_LEARN:
        assert r["best_test_acc"] > 0.3, r["best_test_acc"]  # chance 0.1; float32 gets 0.48
    assert r["device_model"]["name"] == name


def test_devices_command_lists_every_model_with_its_description(capsys):
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    for name in MODELS:
        m = load_device_model(name)
        assert any(line.split()[0] == name and m.description in line
                   for line in out.splitlines()), name
