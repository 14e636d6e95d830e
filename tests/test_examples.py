"""Every script in ``examples/`` runs (at its ``--smoke`` size) and prints what it promises."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
needs_aihwkit = pytest.mark.skipif(importlib.util.find_spec("aihwkit") is None,
                                   reason="needs aihwkit")


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(EXAMPLES / script), "--smoke", *args],
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


def test_every_example_is_tested():
    tested = {"custom_rpu_config.py", "torch_cnn_grapes.py", "aihwkit_analog_grapes.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


@needs_aihwkit
def test_custom_rpu_config_example_writes_full_results(tmp_path):
    out = _run("custom_rpu_config.py", "--out", str(tmp_path))
    assert out.count("best test acc") == 2 and "config.backend = 'SingleRPUConfig'" in out
    for grapes in ("off", "propagating"):
        r = json.loads((tmp_path / f"{grapes}.json").read_text())
        assert r["config"]["grapes"] == grapes and r["config"]["backend"] == "SingleRPUConfig"
        assert "SoftBoundsDevice(" in r["device_model"]["extra"]["rpu_config"]
        assert r["status"] == "ok" and r["pulses_total"] > 0
        assert r["memory"]["device_count"] == r["memory"]["n_weights"] == 64 * 16 + 16 * 10


def test_torch_cnn_example():
    out = _run("torch_cnn_grapes.py")
    for grapes in ("off", "propagating", "local"):
        assert f"grapes {grapes}" in out
    assert "forward order (the last, the output layer, is not modulated): Conv2d, Conv2d, " \
           "Linear, Linear" in out


@needs_aihwkit
def test_aihwkit_analog_example_reports_accuracy_and_pulses():
    out = _run("aihwkit_analog_grapes.py")
    lines = [line for line in out.splitlines() if line.startswith("grapes ")]
    assert len(lines) == 2 and all("pulses (estimated, sum|dW|/dw_min)" in s for s in lines)
    for line in lines:
        pulses = float(line.split("dw_min)")[1].split()[0])
        assert pulses > 0
