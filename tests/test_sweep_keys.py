"""Run keys cover what a run computes: device model content, relative paths, stale results."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from grapes_hw.cli.main import main
from grapes_hw.studies.keys import run_key
from grapes_hw.studies.spec import load_study
from grapes_hw.studies.store import RUNS_FILE, latest_by_key, read_runs
from grapes_hw.studies.sweep import check_done, run_sweep
from grapes_hw.training.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent

DEVICE = """
name = "fixed5-read3"
description = "5-bit fixed point with read noise"
backend = "fixed"
[fixed]
bits = 5
rounding = "stochastic"
[noise]
read_sigma = {sigma}
"""

STUDY = """
[study]
name = "devs"
seeds = 2
[base]
dataset = "digits"
layers = [16]
epochs = 1
download = false
[axes]
backend = ["devs/fixed5-read3.toml", "float32"]
"""


def _setup(tmp_path: Path, sigma: float = 0.03) -> Path:
    (tmp_path / "devs").mkdir(exist_ok=True)
    (tmp_path / "devs" / "fixed5-read3.toml").write_text(DEVICE.format(sigma=sigma))
    study = tmp_path / "study.toml"
    study.write_text(STUDY)
    return study


def test_relative_device_path_resolves_against_the_study_file(tmp_path, monkeypatch):
    study = _setup(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no devs/ here
    st = load_study(study)
    paths = {r.config.device.backend for r in st.runs}
    assert str((tmp_path / "devs" / "fixed5-read3.toml").resolve()) in paths


def test_key_follows_device_content_not_its_path(tmp_path):
    study = _setup(tmp_path)
    keys_a = {r.key for r in load_study(study).runs}
    # the same content at another place: the same keys
    other = tmp_path / "copy"
    other.mkdir()
    (other / "devs").mkdir()
    (other / "devs" / "fixed5-read3.toml").write_text(
        (tmp_path / "devs" / "fixed5-read3.toml").read_text())
    (other / "study.toml").write_text(STUDY)
    assert {r.key for r in load_study(other / "study.toml").runs} == keys_a
    # changed content: new keys for exactly the runs on that file
    (tmp_path / "devs" / "fixed5-read3.toml").write_text(DEVICE.format(sigma=0.2))
    st = load_study(study)
    keys_b = {r.key for r in st.runs}
    float_keys = {r.key for r in st.runs if r.config.device.backend == "float32"}
    assert keys_a & keys_b == float_keys and len(float_keys) == 2


def test_editing_a_device_file_makes_exactly_its_runs_stale(tmp_path, capsys):
    study = _setup(tmp_path)
    out = tmp_path / "out"
    s = run_sweep(study, out=str(out), workers=1, quiet=True)
    assert s.ran == 4
    # unchanged: complete
    assert main(["sweep", str(study), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "4 runs (4 done)" in text
    # edit read_sigma 0.03 -> 0.20: its two runs are to run again, the float runs stay done
    (tmp_path / "devs" / "fixed5-read3.toml").write_text(DEVICE.format(sigma=0.2))
    assert main(["sweep", str(study), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "2 done" in text and "2 to run" in text
    s = run_sweep(study, out=str(out), workers=1, quiet=True)
    assert s.ran == 2 and s.skipped == 2
    recs, _ = read_runs(out / RUNS_FILE)
    sigmas = sorted(r["device_model"]["noise"]["read_sigma"] for r in recs
                    if r["device_model"]["backend"] == "fixed")
    assert sigmas == [0.03, 0.03, 0.2, 0.2]


def test_changed_shipped_model_content_is_reported_stale(tmp_path):
    """A shipped model keeps its name in the key; a record made with other parameters is
    stale, with the reason."""
    study = tmp_path / "s.toml"
    study.write_text('[base]\ndataset = "digits"\nlayers = [8]\nepochs = 1\n'
                     'download = false\nbackend = "fixed8"\n')
    out = tmp_path / "out"
    run_sweep(study, out=str(out), workers=1, quiet=True)
    recs, _ = read_runs(out / RUNS_FILE)
    rec = recs[0]
    rec["device_model"]["params"]["bits"] = 6  # as if fixed8.toml had said 6 bits then
    (out / RUNS_FILE).write_text(json.dumps(rec) + "\n")
    st = load_study(study)
    todo, stale = check_done(st.runs, latest_by_key([rec]), {})
    assert [s.key for s in todo] == [rec["key"]]
    assert "params.bits 6 -> 8" in stale[rec["key"]]


def test_lr_enters_the_key_resolved():
    """Two runs at different learning rates never share a key, whether the rate was given
    or is the optimizer's default; lr 0.1 keeps the keys of the committed results."""
    sgd_default = TrainConfig.from_flat(optimizer="sgd", lr=None)
    sgd_01 = TrainConfig.from_flat(optimizer="sgd", lr=0.1)
    mom_default = TrainConfig.from_flat(optimizer="momentum", lr=None)
    mom_001 = TrainConfig.from_flat(optimizer="momentum", lr=0.01)
    mom_01 = TrainConfig.from_flat(optimizer="momentum", lr=0.1)
    assert run_key(sgd_default) == run_key(sgd_01)
    assert run_key(mom_default) == run_key(mom_001)
    assert run_key(mom_01) != run_key(mom_001)


def _committed() -> list[Path]:
    return sorted(p.parent for p in (ROOT / "studies" / "results").glob("*/study.json"))


@pytest.mark.parametrize("folder", _committed(), ids=lambda p: p.name)
def test_committed_studies_have_nothing_to_run(folder, capsys):
    """Every committed study's results are current (no stale run) and complete (0 runs to
    do), except a sweep still running across sessions, whose folder holds an IN_PROGRESS
    file saying so: its finished runs must still be current."""
    meta = json.loads((folder / "study.json").read_text())
    study_file = ROOT / "studies" / f"{meta['name']}.toml"  # the run may have used a subset
    if not study_file.is_file():
        study_file = ROOT / "studies" / Path(meta["path"]).name
    if meta.get("requires") and "analog" in meta["requires"]:
        pytest.importorskip("aihwkit", reason="the study's device models need aihwkit")
    args = ["sweep", str(study_file), "--out", str(folder), "--dry-run"]
    if meta.get("quick"):
        args.append("--quick")
    assert main(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "stale" not in last and "done" in last, last
    if not (folder / "IN_PROGRESS").is_file():
        assert "to run" not in last and "wait" not in last, last


def test_dry_run_from_another_directory(tmp_path, monkeypatch, capsys):
    study = _setup(tmp_path)
    monkeypatch.chdir(tmp_path / "devs")
    assert main(["sweep", os.path.relpath(study), "--out", str(tmp_path / "o"),
                 "--dry-run"]) == 0
    assert "4 runs (4 to run)" in capsys.readouterr().out


def test_a_changed_snu_default_makes_the_record_stale():
    """The SNU settings resolved per model are recorded (config.snu) but are not TrainConfig
    fields, so a changed default leaves the run key alone: the stale check compares them.
    A field added later matches a record without it only at its pre-existing behaviour."""
    from grapes_hw.functional.snu import SNUParams
    from grapes_hw.studies.keys import run_key, stale_reason
    from grapes_hw.studies.spec import RunSpec
    from grapes_hw.training.config import TrainConfig

    def check(model, recorded_snu):
        cfg = TrainConfig.from_flat(dataset="digits", model=model, layers=(8,))
        spec = RunSpec(run_key(cfg), cfg, {})
        rec = {"config": {**spec.config_dict(), "snu": recorded_snu}}
        return stale_reason(rec, spec, {})

    for model, soft in (("snu", False), ("ssnu", True)):
        now = vars(SNUParams().resolved(soft))
        assert check(model, dict(now)) is None
        assert "snu.threshold" in check(model, {**now, "threshold": now["threshold"] + 1})
        before = {k: v for k, v in now.items() if k != "center_output"}  # an older record
        reason = check(model, before)
        assert (reason is None) == (not soft), reason  # sSNU rows are centred now
    assert "recorded false, planned true" in check("ssnu", {**before, "center_output": False})
