"""Per-rule tuning in the sweep runner: choice, validation-only metric, resume, links."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grapes_hw.errors import ConfigError
from grapes_hw.studies.spec import load_study, study_from_dict
from grapes_hw.studies.store import RUNS_FILE, TUNING_FILE
from grapes_hw.studies.sweep import run_sweep
from grapes_hw.studies.tune import choose, run_metric
from grapes_hw.studies.tuning import final_runs, tuning_choices, tuning_plan

BASE = {"dataset": "digits", "layers": [16], "epochs": 2, "download": False}


def rec(val: list[float | None], test: list[float] | None = None, status: str = "ok",
        key: str = "k") -> dict:
    test = test or [0.5] * len(val)
    return {"key": key, "status": status,
            "epochs": [{"epoch": i + 1, "val_acc": v, "test_acc": t}
                       for i, (v, t) in enumerate(zip(val, test, strict=True))]}


def test_choice_uses_validation_only():
    """Value 0.1 is best on validation, 0.01 on the test set: tuning must pick 0.1."""
    records = {0: [rec([0.6, 0.7], test=[0.9, 0.95])],
               1: [rec([0.8, 0.85], test=[0.5, 0.55])]}
    c = choose("g", [0.01, 0.1], records, "val_acc")
    assert c.value == 0.1
    assert [p["metric"] for p in c.curve] == [0.7, 0.85]
    assert choose("g", [0.01, 0.1], {0: [rec([0.9, 0.6])], 1: [rec([0.7, 0.8])]},
                  "final_val_acc").value == 0.1


def test_mean_over_tuning_seeds_ties_and_failures():
    # mean over seeds: 0.05 -> (0.8 + 0.6) / 2 = 0.7 < 0.1 -> (0.75 + 0.75) / 2
    c = choose("g", [0.05, 0.1], {0: [rec([0.8]), rec([0.6])], 1: [rec([0.75]), rec([0.75])]},
               "val_acc")
    assert c.value == 0.1
    # a tie goes to the smaller value and is said
    c = choose("g", [0.2, 0.05], {0: [rec([0.7])], 1: [rec([0.7])]}, "val_acc")
    assert c.value == 0.05 and "tie" in c.note
    # a diverged seed disqualifies its value
    c = choose("g", [0.5, 0.1], {0: [rec([0.9]), rec([None], status="diverged")],
                                 1: [rec([0.6]), rec([0.6])]}, "val_acc")
    assert c.value == 0.1 and "0.5" in c.note
    # every run diverged: the smallest value, said plainly
    c = choose("g", [0.5, 0.2], {0: [rec([None], status="diverged")],
                                 1: [rec([None], status="error")]}, "val_acc")
    assert c.value == 0.2 and "every tuning run diverged" in c.note
    assert run_metric(rec([0.1, None, 0.3]), "val_acc") == 0.3


def tuned_study(**tune) -> dict:
    return {"study": {"seeds": 2}, "base": BASE,
            "variants": [{"optimizer": "sgd"}, {"optimizer": "sgd", "grapes": "propagating"},
                         {"optimizer": "sgd", "lr_matched": True}],
            "tune": {"lr": [0.001, 0.2], "epochs": 1, "train_subset": 600,
                     "val_fraction": 0.25, **tune}}


def test_plan_groups_links_and_tuning_runs():
    st = study_from_dict(tuned_study(seeds=2))
    groups, links, runs = tuning_plan(st)
    assert len(groups) == 3 and len(links) == 1  # the lr-matched control is linked
    assert len(runs) == 2 * 2 * 2  # 2 tuned groups x 2 values x 2 tuning seeds
    for r in runs:
        assert r.phase == "tune"
        assert r.config.data.val_fraction == 0.25 and r.config.data.train_subset == 600
        assert r.config.run.epochs == 1 and r.config.rule.lr in (0.001, 0.2)
    # nothing done: every study run waits
    choices, missing = tuning_choices(st, {})
    assert choices == {} and len(missing) == 8
    assert final_runs(st, choices) == ([], 6)


def test_tuned_field_may_not_be_an_axis():
    raw = tuned_study()
    raw["axes"] = {"lr": [0.1, 0.2]}
    with pytest.raises(ConfigError, match="axes.lr"):
        study_from_dict(raw)
    raw = tuned_study(metric="test_acc")
    with pytest.raises(ConfigError, match="tune.metric"):
        study_from_dict(raw)
    raw = tuned_study(val_fraction=0)
    with pytest.raises(ConfigError, match="tune.val_fraction"):
        study_from_dict(raw)


def test_tuned_sweep_end_to_end(tmp_path):
    """Tuning picks the value with the best mean validation accuracy (recomputed here from
    runs.jsonl), the study's seeds run at it, lr-matched takes GRAPES' value."""
    study = study_from_dict(tuned_study())
    out = tmp_path / "out"
    s = run_sweep(study, out=str(out), workers=1, quiet=True)
    recs = [json.loads(x) for x in (out / RUNS_FILE).read_text().splitlines()]
    tune_recs = [r for r in recs if r.get("phase") == "tune"]
    final = [r for r in recs if r.get("phase") is None]
    assert len(tune_recs) == 4 and len(final) == 6 and s.ran == 10
    for r in tune_recs:  # validation carved from the training subset; test set untouched
        assert r["dataset"]["n_val"] == 150 and r["dataset"]["n_train"] == 450
    tuning = json.loads((out / TUNING_FILE).read_text())
    expect = {}
    for g in {r["tune_group"] for r in tune_recs}:
        best = {}
        for r in tune_recs:
            if r["tune_group"] == g:
                best[r["tune_value"]] = max(e["val_acc"] for e in r["epochs"])
        expect[g] = max(sorted(best), key=lambda v: best[v])
    chosen = {g["group"]: g["value"] for g in tuning["groups"]}
    for g, v in expect.items():
        assert chosen[g] == v
    by_grapes = {}
    for r in final:
        c = r["config"]
        key = "matched" if c["lr_matched"] else c["grapes"]
        by_grapes.setdefault(key, set()).add(c["lr"])
    assert all(len(v) == 1 for v in by_grapes.values())
    assert by_grapes["matched"] == by_grapes["propagating"]
    # one worker: each group's seeds run right after its tuning, before the next group's
    # tuning (the lr-matched control right after the GRAPES group it takes its lr from)
    phases = ["T" if r.get("phase") == "tune" else "S" for r in recs]
    assert "".join(phases) == "TTSSTTSSSS"
    assert {r["config"]["grapes"] for r in recs[:4]} == {"off"}
    # resumes with nothing to do
    s2 = run_sweep(study, out=str(out), workers=1, quiet=True)
    assert s2.ran == 0 and s2.skipped == 10


KILL_TUNE = """
[study]
name = "killtune"
seeds = 2
[base]
dataset = "digits"
layers = [32]
epochs = 6
download = false
[axes]
grapes = ["off", "propagating"]
[tune]
lr = [0.02, 0.1]
epochs = 6
val_fraction = 0.2
"""


def _kill_when(cmd, runs: Path, ready) -> None:
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         start_new_session=True)
    try:
        deadline = time.time() + 200
        while time.time() < deadline and p.poll() is None:
            if runs.exists() and ready([json.loads(x) for x in runs.read_text().splitlines()
                                        if x.endswith("}")]):
                break
            time.sleep(0.02)
        assert p.poll() is None, f"sweep ended before it could be killed: {p.stderr.read()}"
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_sigkill_in_both_phases_then_resume(tmp_path):
    study = tmp_path / "killtune.toml"
    study.write_text(KILL_TUNE)
    out = tmp_path / "out"
    runs = out / RUNS_FILE
    cmd = [sys.executable, "-m", "grapes_hw.cli", "sweep", str(study), "--out", str(out),
           "--workers", "1", "--quiet"]
    # killed during tuning (one of 4 tuning runs done) ...
    _kill_when(cmd, runs, lambda rs: len(rs) >= 1)
    first = [json.loads(x) for x in runs.read_text().splitlines() if x.endswith("}")]
    assert all(r.get("phase") == "tune" for r in first) and len(first) < 4
    # ... and during the seed phase (one of 4 study runs done)
    _kill_when(cmd, runs, lambda rs: any(r.get("phase") is None for r in rs))
    # the first group is tuned and seeding, the second not tuned yet: study.json plans the
    # first group's 2 seed runs and counts the second's as waiting, and the report says so
    planned = json.loads((out / "study.json").read_text())
    assert sum(r["phase"] == "study" for r in planned["runs"]) == 2
    assert planned["waiting_for_tuning"] == 2
    from grapes_hw.studies.report import write_report

    md = write_report(out).read_text()
    assert "The study plans 8 runs" in md and "2 wait for their group's tuning" in md
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    recs = [json.loads(x) for x in runs.read_text().splitlines()]
    keys = [x["key"] for x in recs]
    assert len(keys) == len(set(keys)) == 8  # each run exactly once
    st = load_study(study)
    _, _, tune_runs = tuning_plan(st)
    done = {x["key"]: x for x in recs}
    choices, missing = tuning_choices(st, done)
    finals, waiting = final_runs(st, choices)
    assert not missing and not waiting
    assert sorted(keys) == sorted([t.key for t in tune_runs] + [f.key for f in finals])


def test_report_of_a_tuned_sweep(tmp_path):
    """The report keeps tuning runs out of the study's tables, shows each group's tuning
    curve with the metric recomputed here from runs.jsonl and the chosen value, groups the
    study's runs without splitting them by their tuned lr (so GRAPES is compared with its
    baseline), and writes the device-state and equal-lr tables."""
    from grapes_hw.studies.report import write_report

    study = study_from_dict(tuned_study())
    out = tmp_path / "out"
    run_sweep(study, out=str(out), workers=1, quiet=True)
    md = write_report(out).read_text()
    recs = [json.loads(x) for x in (out / RUNS_FILE).read_text().splitlines()]
    tune_recs = [r for r in recs if r.get("phase") == "tune"]
    assert "## Tuning" in md and "lr (tuned)" in md
    # a finished tuned sweep is reported finished: its tuning runs count as planned results
    assert "all have a result" in md and "no result yet" not in md
    assert f"plus {len(tune_recs)} learning-rate tuning runs" in md
    tune_s = sum(r["seconds_total"] for r in tune_recs)
    assert f"{tune_s / 60:.0f} min for tuning" in md  # compute, from the runs' own records
    for r in tune_recs:  # one tuning seed: each cell is that run's best validation accuracy
        assert f"{max(e['val_acc'] for e in r['epochs']):.4f}" in md
    chosen = {g["group"]: g["value"] for g in json.loads((out / TUNING_FILE).read_text())
              ["groups"]}
    tuning_csv = (out / "tuning.csv").read_text().splitlines()
    assert len(tuning_csv) == 1 + 2 * 2  # 2 tuned groups x 2 values (lr-matched is linked)
    assert all(",sgd" in row for row in tuning_csv[1:])
    assert (out / "tuning.png").is_file() and (out / "equal_lr.csv").is_file()
    assert "## Device state and write cost per layer" in md  # GRAPES factors per layer
    # the study's groups are not split by their (different) tuned lrs: comparisons exist
    assert "sgd + GRAPES (propagating)" in (out / "comparisons.csv").read_text()
    assert set(chosen.values()) <= {0.001, 0.2}
    assert "the one the study's seeds run at." in md and "so far" not in md
    assert "lr-matched controls take the value tuned for SGD + GRAPES" in md
    # a group tuned but not yet seeded (a sweep still running) is named, not implied done
    kept = [x for x in (out / RUNS_FILE).read_text().splitlines()
            if not (json.loads(x).get("phase") is None
                    and json.loads(x)["config"]["grapes"] == "propagating")]
    (out / RUNS_FILE).write_text("\n".join(kept) + "\n")
    md = write_report(out).read_text()
    assert ("(2 of the 3 groups with a chosen value have seed results so far; not yet: "
            "float32 sgd + GRAPES (propagating))") in md


def test_equal_lr_table_keeps_tuning_groups_of_other_networks_apart(tmp_path):
    from grapes_hw.studies.analysis import load
    from grapes_hw.studies.report_tuning import equal_lr_rows

    raw = tuned_study()
    raw["variants"] = raw["variants"][:2]
    raw["axes"] = {"layers": [[16], [8]]}
    out = tmp_path / "out"
    run_sweep(study_from_dict(raw), out=str(out), workers=1, quiet=True)
    rows = equal_lr_rows(load(out))
    # 2 networks x 2 rules x 2 lrs, one tuning run each: never two networks in one row
    assert len(rows) == 8 and all(r[-1] == 1 for r in rows)
    assert {r[2] for r in rows} == {f"{rule}, layers={w}" for w in ("16", "8")
                                    for rule in ("sgd", "sgd + GRAPES (propagating)")}


def test_a_run_at_a_superseded_tuned_value_is_left_out_and_said_so(tmp_path):
    from grapes_hw.studies.report import write_report

    out = tmp_path / "out"
    run_sweep(study_from_dict(tuned_study()), out=str(out), workers=1, quiet=True)
    assert "values of the tuned lr" not in write_report(out).read_text()
    recs = [json.loads(x) for x in (out / RUNS_FILE).read_text().splitlines()]
    old = next(r for r in recs if r.get("phase") is None and r["config"]["grapes"] == "off"
               and not r["config"]["lr_matched"])
    # a seed run from before the choice changed: another key, another lr
    old = {**old, "key": "0ld", "config": {**old["config"], "lr": 0.123, "seed": 7}}
    (out / RUNS_FILE).write_text("".join(json.dumps(r) + "\n" for r in [*recs, old]))
    md = write_report(out).read_text()
    # with the study's plan at hand, the superseded run is left out (it was pooled with the
    # run at the new choice: a mean over two learning rates), and the report says so
    warn = [ln for ln in md.splitlines() if "the tuning no longer chooses" in ln]
    assert len(warn) == 1 and "1 result at a lr" in warn[0], md[:3000]
    assert "0.123" not in md and "values of the tuned lr" not in md


def test_equal_lr_table_shows_the_metric_the_tuning_chose_by(tmp_path):
    """With metric final_val_acc the table of rules at equal lr showed the best val acc
    (another number for the same run than the tuning table's)."""
    from grapes_hw.studies.analysis import load
    from grapes_hw.studies.report import write_report
    from grapes_hw.studies.report_tuning import equal_lr_rows
    from grapes_hw.studies.tune import run_metric

    raw = tuned_study(metric="final_val_acc", epochs=2)
    raw["variants"] = raw["variants"][:1]
    out = tmp_path / "out"
    run_sweep(study_from_dict(raw), out=str(out), workers=1, quiet=True)
    an = load(out)
    finals = sorted(run_metric(r, "final_val_acc") for r in an.tune_runs)
    assert sorted(row[3] for row in equal_lr_rows(an)) == pytest.approx(finals)
    assert "| final val acc |" in write_report(out).read_text()
