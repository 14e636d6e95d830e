"""The PCM studies' quick variants: their schema, and a result each (pcm_insitu, pcm_drift,
crossbar)."""

from __future__ import annotations

import importlib.util
import json

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("aihwkit") is None,
                                reason="aihwkit is not installed")

from grapes_hw.studies.executors import run_one  # noqa: E402
from grapes_hw.studies.spec import load_study  # noqa: E402
from grapes_hw.studies.store import RUNS_FILE, TUNING_FILE  # noqa: E402
from grapes_hw.studies.sweep import run_sweep  # noqa: E402
from grapes_hw.studies.tuning import final_runs, tuning_plan  # noqa: E402


def test_pcm_insitu_full_schema_and_quick_tuning_plan():
    full = load_study("pcm_insitu")
    groups, links, tune_runs = tuning_plan(full)
    backends = {s.config.device.backend for s in full.runs}
    assert backends == {"float32", "idealized-insitu", "pcm-unitcell", "pcm-insitu"}
    assert {s.config.run.seed for s in full.runs} == {0, 1, 2}
    assert all(s.config.data.dataset == "fashion-mnist" and s.config.run.epochs >= 10
               for s in full.runs)
    assert len(groups) == 4 * 6 and len(links) == 4  # lr-matched takes GRAPES' tuned lr
    assert len(tune_runs) == 4 * 5 * len(full.tune.values)
    assert all(r.config.data.val_fraction > 0 for r in tune_runs)
    quick = load_study("pcm_insitu", quick=True)
    assert {s.config.data.dataset for s in quick.runs} == {"digits"}


def test_pcm_drift_quick_runs_with_tuning_and_drift(tmp_path):
    st = load_study("pcm_drift", quick=True)
    assert {s.config.device.backend for s in st.runs} == {"pcm-inference"}
    out = tmp_path / "drift"
    s = run_sweep(st, out=str(out), workers=1, quiet=True)
    assert s.statuses.get("error", 0) == 0
    recs = [json.loads(x) for x in (out / RUNS_FILE).read_text().splitlines()]
    finals = [r for r in recs if r.get("phase") is None]
    assert len(finals) == len(st.runs) == 4
    tuned = {g["value"] for g in json.loads((out / TUNING_FILE).read_text())["groups"]}
    assert tuned <= set(st.tune.values)
    for r in finals:
        assert r["status"] == "ok" and r["config"]["lr"] in st.tune.values
        times = sorted({d["t_seconds"] for d in r["drift"]})
        assert len(times) == 4 and {d["compensation"] for d in r["drift"]} == {True, False}


def test_crossbar_schema_and_one_quick_result():
    full = load_study("crossbar")
    backends = {s.config.device.backend for s in full.runs}
    assert backends >= {"pcm-insitu-dac4", "pcm-insitu-dac5", "pcm-insitu-dac6",
                        "pcm-insitu-adc6", "pcm-insitu-adc7", "pcm-insitu-adc8",
                        "pcm-insitu-outnoise0", "pcm-insitu-outnoise20", "pcm-insitu-irdrop",
                        "pcm-insitu-tile128", "pcm-insitu-tile256"}
    rules = {(s.config.rule.optimizer, s.config.rule.grapes) for s in full.runs}
    assert rules == {("sgd", "off"), ("momentum", "off"), ("sgd", "propagating")}
    assert {s.config.run.seed for s in full.runs} == {0, 1}
    quick = load_study("crossbar", quick=True)
    spec = next(s for s in quick.runs if s.config.device.backend == "pcm-insitu-dac4")
    rec = run_one(spec.config_dict(), spec.key, threads=1)
    assert rec["status"] == "ok" and rec["best_test_acc"] > 0.15
    assert rec["pulses_unit"].startswith("estimated programming steps")
    assert rec["device_model"]["name"] == "pcm-insitu-dac4"


def test_final_runs_take_the_chosen_value():
    """A study's runs are built at their group's chosen value, not the one in the file."""
    from grapes_hw.studies.tune import Choice

    st = load_study("pcm_drift", quick=True)
    groups, _, _ = tuning_plan(st)
    choices = {g: Choice(g, 0.02) for g in groups}
    runs, waiting = final_runs(st, choices)
    assert waiting == 0 and {r.config.rule.lr for r in runs} == {0.02}
