"""Reports from a hand-made runs.jsonl: what ran, flags, table cells and Welch p values
checked against values computed here (statistics, scipy), plots written only with data."""

from __future__ import annotations

import csv
import json
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from grapes_hw.cli.main import main
from grapes_hw.studies.report import write_report
from grapes_hw.training.metrics import plateau

DEVICES = {
    "float32": {"backend": "float", "params": {"dtype": "float32"}, "noise": None},
    "fixed8": {"backend": "fixed", "params": {"bits": 8, "rounding": "stochastic"},
               "noise": None},
    "fixed4": {"backend": "fixed", "params": {"bits": 4, "rounding": "stochastic"},
               "noise": None},
    "fixed4-nearest": {"backend": "fixed", "params": {"bits": 4, "rounding": "nearest"},
                       "noise": None},
    "fixed2-nearest": {"backend": "fixed", "params": {"bits": 2, "rounding": "nearest"},
                       "noise": None},
    "float32-read10": {"backend": "float", "params": {"dtype": "float32"},
                       "noise": {"read_sigma": 0.1, "write_sigma": 0.0}},
    "float32-write5": {"backend": "float", "params": {"dtype": "float32"},
                       "noise": {"read_sigma": 0.0, "write_sigma": 0.05}},
}
METHODS = [("sgd", "off", 0.1), ("sgd", "propagating", 0.1), ("momentum", "off", 0.01)]
BASE_ACC = {"float32": 0.88, "fixed8": 0.87, "fixed4": 0.80, "fixed4-nearest": 0.60,
            "float32-read10": 0.84, "float32-write5": 0.86}
# SGD + GRAPES is better than SGD on float32, worse on fixed4 (the report must say so).
METHOD_DELTA = {("float32", "sgd", "propagating"): 0.02, ("fixed4", "sgd", "propagating"): -0.03}
EPOCHS = 10
STEEP = "float32-write5-momentum-off-1"
"""A run whose curve is still rising linearly: its fitted max accuracy is > 1 (rejected)."""
WIDTHS = (64, 16, 10)  # digits: 64 inputs, one hidden layer of 16, 10 classes


def true_slowness(backend: str, grapes: str, seed: int) -> float:
    return 0.3 + 0.1 * seed + (0.2 if grapes != "off" else 0.0)


def make_run(backend: str, opt: str, grapes: str, lr: float, seed: int) -> dict:
    ep = np.arange(1, EPOCHS + 1)
    if backend == "fixed2-nearest":  # never learns, never writes
        curve, pulses = [0.1] * EPOCHS, 0
    else:
        best = (BASE_ACC[backend] + METHOD_DELTA.get((backend, opt, grapes), 0.0)
                + (0.01 if opt == "momentum" else 0.0) + 0.004 * ((seed * 7 + len(backend)) % 3))
        s = true_slowness(backend, grapes, seed)
        curve = [float(v) for v in plateau(ep, best * (s + EPOCHS) / EPOCHS, s)]
        pulses = 600 + 10 * seed
    key = f"{backend}-{opt}-{grapes}-{seed}"
    if key == STEEP:
        curve = [float(v) for v in 0.08 * ep]
    run = {
        "key": key,
        "config": {"dataset": "digits", "layers": [WIDTHS[1]], "backend": backend,
                   "optimizer": opt, "grapes": grapes, "lr": lr, "momentum": 0.9, "seed": seed,
                   "epochs": EPOCHS, "extra": {}, "lr_effective": lr, "lr_scale": 1.0},
        "device_model": {"name": backend, **DEVICES[backend]},
        "dataset": {"name": "digits", "source": "sklearn", "n_train": 1347, "n_test": 450,
                    "n_val": 0},
        "memory": {"n_weights": WIDTHS[0] * WIDTHS[1] + WIDTHS[1] * WIDTHS[2]},
        "epochs": [{"epoch": i + 1, "train_loss": 1.0 / (i + 1), "train_acc": a, "test_acc": a,
                    "seconds": 0.1, "pulses": pulses // EPOCHS} for i, a in enumerate(curve)],
        "best_test_acc": max(curve), "final_test_acc": curve[-1],
        # what an old version stored: every fit "ok", never learning runs "fastest"
        "slowness": 0.0, "plateau_fit": {"max_accuracy": 0.1, "slowness": 0.0, "ok": True,
                                         "reason": ""},
        "status": "ok", "diverged_epoch": None,
        "optimizer_state_bytes": 4096 if opt == "momentum" else 0,
        "pulses_total": pulses, "seconds_total": 0.3,
    }
    if backend == "fixed8":
        run["drift"] = [{"t_seconds": t, "test_acc": max(curve) - 0.01 * k - (0 if c else 0.02),
                         "compensation": c}
                        for k, t in enumerate([1.0, 3600.0, 86400.0]) for c in (True, False)]
    return run


def write_runs(d: Path, runs: list[dict], extra_lines: list[dict] = ()) -> None:
    lines = [json.dumps(r) for r in [*extra_lines, *runs]]
    (d / "runs.jsonl").write_text("\n".join(lines) + "\n")


def build_sweep(d: Path) -> list[dict]:
    runs = [make_run(b, o, g, lr, s) for b in DEVICES for (o, g, lr) in METHODS
            for s in range(3)]
    # one diverged run, one failed run, and a superseded error line for a key that later ran
    div = next(r for r in runs if r["key"] == "fixed4-momentum-off-2")
    div.update(status="diverged", diverged_epoch=EPOCHS, final_test_acc=None)
    div["epochs"][-1]["test_acc"] = None
    div["best_test_acc"] = max(e["test_acc"] for e in div["epochs"][:-1])
    err = next(r for r in runs if r["key"] == "fixed8-sgd-off-1")
    for k in ("best_test_acc", "final_test_acc", "slowness", "device_model"):
        err.pop(k)
    err.update(status="error", error="Traceback (most recent call last):\nRuntimeError: boom",
               epochs=[])
    stale = {**runs[0], "status": "error", "error": "old failure", "best_test_acc": None}
    write_runs(d, runs, [stale])
    # the study's description claims other settings than ran: the report must not repeat them
    (d / "study.json").write_text(json.dumps({
        "name": "fixture", "question": "Q?", "quick": True,
        "description": "Fashion-MNIST 784-256-256-256-10, 5 seeds, 100 epochs",
        "runs": [{"key": r["key"], "config": r["config"], "label": {}} for r in runs]}))
    return runs


@pytest.fixture
def sweep_dir(tmp_path) -> tuple[Path, list[dict]]:
    return tmp_path, build_sweep(tmp_path)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, list[dict], str]:
    """One report of the fixture, shared by the tests that only read it."""
    d = tmp_path_factory.mktemp("report")
    runs = build_sweep(d)
    return d, runs, write_report(d).read_text()


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def num(s: str) -> float | None:
    return float(s) if s != "" else None


def md_table(md: str, heading: str) -> list[dict]:
    """The Markdown table under ``heading`` as dicts (header -> cell)."""
    lines = md.split(f"## {heading}\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    rows = lines[start:end]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in r.strip("|").split("|")), strict=True))
            for r in rows[2:]]


def group_of(runs: list[dict], backend: str, opt: str, grapes: str) -> list[dict]:
    return [r for r in runs if r["config"]["backend"] == backend
            and r["config"]["optimizer"] == opt and r["config"]["grapes"] == grapes]


def finished(group: list[dict]) -> list[dict]:
    return [r for r in group if r["status"] in ("ok", "diverged")]


def accepted_slowness(group: list[dict]) -> list[float]:
    return [true_slowness(r["config"]["backend"], r["config"]["grapes"], r["config"]["seed"])
            for r in finished(group)
            if r["config"]["backend"] != "fixed2-nearest" and r["key"] != STEEP]


def test_header_states_what_ran_not_the_description(written):
    d, _, md = written
    what = md.split("## What ran", 1)[1].split("\n## ", 1)[0]
    assert "- Dataset: digits (1347 train, 450 test samples)" in what
    assert "- Network: MLP 64-16-10" in what
    assert f"- Epochs: {EPOCHS} epochs" in what
    assert "- Seeds: 0-2 (3 seeds)" in what
    assert "with 2-3 finished runs each" in what  # the error run leaves 2 in its cell
    assert "Fashion" not in what and "784" not in what
    assert md.splitlines()[2] == f"*digits, MLP 64-16-10, {EPOCHS} epochs, seeds 0-2.*"
    # the study's own text is labelled as the plan
    plan = md.split("## The study as planned", 1)[1].split("\n## ", 1)[0]
    assert "quick variant" in plan and "Fashion-MNIST" in plan


def test_results_table_cells_equal_statistics(written):
    d, runs, md = written
    table = md_table(md, "Results per group")
    assert len(table) == len(DEVICES) * len(METHODS)
    # devices in their meaningful order: float first, bits descending, noise after
    order = list(dict.fromkeys(r["backend"] for r in table))
    assert order == ["float32", "float32-read10", "float32-write5", "fixed8", "fixed4",
                     "fixed4-nearest", "fixed2-nearest"]
    checked = 0
    for row in table:
        group = group_of(runs, row["backend"], row["optimizer"], row["grapes"])
        fin = finished(group)
        assert int(row["runs"]) == len(group) and int(row["n"]) == len(fin)
        best = [r["best_test_acc"] for r in fin]
        final = [r["final_test_acc"] for r in fin if r["final_test_acc"] is not None]
        assert row["best test acc"] == \
            f"{statistics.mean(best):.4f} ± {statistics.stdev(best):.4f}"
        assert row["final test acc"] == \
            f"{statistics.mean(final):.4f}" + (f" ± {statistics.stdev(final):.4f}"
                                               if len(final) > 1 else "")
        slow = accepted_slowness(group)
        if not slow:
            assert row["slowness"] == "n/a"
        else:
            cell = (f"{statistics.mean(slow):.3f}"
                    + (f" ± {statistics.stdev(slow):.3f}" if len(slow) > 1 else ""))
            if len(slow) < len(fin):
                cell += f" ({len(slow)} of {len(fin)} fits)"
            assert row["slowness"] == cell
        pulses = [r["pulses_total"] for r in fin]
        assert row["pulses"] == f"{statistics.mean(pulses):.3g} " + (
            "writes" if row["backend"].startswith("float") else "cells changed")
        checked += 1
    assert checked == 21

    rows = read_csv(d / "summary.csv")
    err_row = next(r for r in rows if r["backend"] == "fixed8" and r["optimizer"] == "sgd"
                   and r["grapes"] == "off")
    assert err_row["n_error"] == "1" and err_row["best_test_acc_n"] == "2"
    for row in rows:
        slow = accepted_slowness(group_of(runs, row["backend"], row["optimizer"], row["grapes"]))
        if slow:
            assert num(row["slowness_mean"]) == pytest.approx(statistics.mean(slow), rel=1e-5)
        else:
            assert row["slowness_mean"] == "" and row["slowness_n"] == "0"
    assert {r["pulses_unit"] for r in rows} == {"writes", "cells changed"}


def test_welch_p_values_equal_scipy(written):
    d, runs, md = written
    comps = read_csv(d / "comparisons.csv")
    tested = 0
    for c in comps:
        backend = c["context"].removeprefix("backend=")
        a = [r["best_test_acc"] for r in finished(group_of(runs, backend, "sgd", "propagating"))]
        b = [r["best_test_acc"] for r in finished(group_of(runs, backend, "sgd", "off"))]
        assert float(c["best_test_acc_mean"]) == pytest.approx(statistics.mean(a), abs=1e-12)
        if len(set(a)) == len(set(b)) == 1:
            continue  # scipy gives nan; the report says 1 for equal means (fixed2-nearest)
        p = stats.ttest_ind(a, b, equal_var=False).pvalue
        assert float(c["welch_p"]) == pytest.approx(p, rel=1e-9)
        assert f"Welch p={p:.3g}" in c["verdict"]
        line = next(x for x in md.splitlines() if x.startswith(f"- {c['context']}: sgd + GRAPES"))
        assert f"Welch p={p:.3g}" in line
        sa = accepted_slowness(group_of(runs, backend, "sgd", "propagating"))
        sb = accepted_slowness(group_of(runs, backend, "sgd", "off"))
        if len(sa) > 1 and len(sb) > 1:
            ps = stats.ttest_ind(sa, sb, equal_var=False).pvalue
            assert float(c["slowness_welch_p"]) == pytest.approx(ps, rel=1e-3)
        tested += 1
    assert tested == len(DEVICES) - 1
    # the verdicts follow from the numbers: GRAPES wins on float32, loses on fixed4
    assert any(c["context"] == "backend=float32" and c["verdict"].startswith("beats")
               for c in comps)
    summary = {ln.split(" in ", 1)[0]: ln.split(": ", 1)[1].rstrip(".").split("; ")
               for ln in md.splitlines() if ln.startswith("- SGD + GRAPES is ")}
    assert "backend=float32" in summary["- SGD + GRAPES is significantly better than SGD"]
    assert "backend=fixed4" in summary["- SGD + GRAPES is significantly worse than SGD"]
    assert all("backend=fixed4" not in v for k, v in summary.items() if "worse" not in k)
    # the best-method line's p value too
    best = next(x for x in md.splitlines() if x.startswith("- backend=float32: best is"))
    mom = [r["best_test_acc"] for r in finished(group_of(runs, "float32", "momentum", "off"))]
    grapes = [r["best_test_acc"] for r in finished(group_of(runs, "float32", "sgd",
                                                             "propagating"))]
    ranked = sorted([("momentum, lr=0.01", mom), ("sgd + GRAPES (propagating), lr=0.1", grapes)],
                    key=lambda kv: -statistics.mean(kv[1]))
    assert f"best is **{ranked[0][0]}**" in best
    p = stats.ttest_ind(ranked[0][1], ranked[1][1], equal_var=False).pvalue
    assert f"Welch p={p:.3g}" in best


def test_flags_chance_zero_pulses_rejected_fits_diverged_errors(written):
    d, runs, md = written
    flags = read_csv(d / "flagged_runs.csv")
    by_key: dict[str, set] = {}
    for f in flags:
        by_key.setdefault(f["key"], set()).add(f["flag"])
    chance = {r["key"] for r in runs if r["config"]["backend"] == "fixed2-nearest"}
    assert len(chance) == 9
    for k in chance:
        assert by_key[k] == {"chance", "zero pulses", "fit rejected"}
    assert by_key[STEEP] == {"fit rejected"}
    steep = next(f for f in flags if f["key"] == STEEP)
    assert "max accuracy" in steep["detail"]
    assert by_key["fixed4-momentum-off-2"] == {"diverged"}
    assert by_key["fixed8-sgd-off-1"] == {"error"}
    assert len(by_key) == 9 + 3  # no other run is flagged
    # the Markdown says so too
    assert "**12 of 63 runs flagged**" in md
    table = md_table(md, "Flagged runs")
    fx2 = [r for r in table if r["backend"] == "fixed2-nearest"]
    assert len(fx2) == 3 and all(r["at chance"] == r["zero pulses"] == r["fit rejected"] == "3"
                                 for r in fx2)
    assert "Plateau fits rejected: 9 curve at chance level, 1 fitted max accuracy > 1." in md
    assert "fixed4-momentum-off-2" in md and f"diverged in epoch {EPOCHS}" in md
    assert "fixed8-sgd-off-1" in md and "RuntimeError: boom" in md
    assert "Runs with results: **63** (1 diverged, 1 error, 61 ok)" in md
    # the old stored fits (ok, slowness 0) were not trusted
    assert "fixed2-nearest | sgd | off | 0.1 | 3 | 3 | 0 | 0 | **3** |" in md


def test_plots_and_csvs_written_only_with_data(sweep_dir, tmp_path):
    d, runs = sweep_dir
    write_report(d)
    for png in ("best_test_acc", "slowness", "learning_curves", "pulses", "optimizer_memory",
                "acc_vs_bits", "acc_vs_noise", "drift"):
        p = d / f"{png}.png"
        assert p.is_file() and p.stat().st_size > 2000, png
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bits = read_csv(d / "acc_vs_bits.csv")
    stoch = [r for r in bits if "rounding=stochastic" in r["series"]
             and r["series"].startswith("sgd, lr=0.1")]
    assert sorted(float(r["bits"]) for r in stoch) == [4.0, 8.0]
    r4 = next(r for r in stoch if float(r["bits"]) == 4.0)
    want = [r["best_test_acc"] for r in group_of(runs, "fixed4", "sgd", "off")]
    assert float(r4["best_test_acc_mean"]) == pytest.approx(statistics.mean(want))
    noise = read_csv(d / "acc_vs_noise.csv")
    assert {r["noise"] for r in noise} == {"read", "write"}
    assert {float(r["sigma"]) for r in noise if r["noise"] == "read"} == {0.0, 0.1}
    lc = read_csv(d / "learning_curves.csv")
    g = [r for r in lc if r["backend"] == "float32" and r["optimizer"] == "momentum"]
    assert [int(r["epoch"]) for r in g] == list(range(1, EPOCHS + 1))
    want = [r["epochs"][1]["test_acc"] for r in group_of(runs, "float32", "momentum", "off")]
    assert float(g[1]["test_acc_mean"]) == pytest.approx(statistics.mean(want))
    assert {r["compensation"] for r in read_csv(d / "drift.csv")} == {"true", "false"}

    # float devices only, one bit width, no noise, no drift: those plots are not written,
    # and the ones of an earlier report in the folder are removed
    only_float = [r for r in runs if r["config"]["backend"] == "float32"]
    write_runs(d, only_float)
    (d / "study.json").unlink()
    md = write_report(d).read_text()
    for png in ("pulses", "acc_vs_bits", "acc_vs_noise", "drift"):
        assert not (d / f"{png}.png").exists(), png
        assert f"{png}.png" not in md
    assert not (d / "acc_vs_noise.csv").exists()
    assert (d / "best_test_acc.png").is_file() and "(best_test_acc.png)" in md


def test_plateau_fits_plot_needs_an_accepted_fit_and_few_panels(sweep_dir):
    d, runs = sweep_dir
    write_report(d)
    assert not (d / "plateau_fits.png").exists()  # many devices: more panels than it draws
    runs = [r for r in runs if r["config"]["backend"] in ("float32", "fixed8")]
    write_runs(d, runs)
    (d / "study.json").unlink()
    md = write_report(d).read_text()
    assert (d / "plateau_fits.png").is_file() and "(plateau_fits.png)" in md
    short = []
    for r in runs:  # 2 epochs: every fit is rejected (need at least 3)
        r = {**r, "epochs": r["epochs"][:2], "plateau_fit": None, "slowness": None}
        short.append(r)
    write_runs(d, short)
    md = write_report(d).read_text()
    assert not (d / "plateau_fits.png").exists() and "plateau_fits.png" not in md


def test_single_seed_report(tmp_path):
    runs = [make_run("float32", o, g, lr, 0) for (o, g, lr) in METHODS]
    write_runs(tmp_path, runs)
    md = write_report(tmp_path).read_text()
    assert "- Seeds: 0 (1 seed)" in md and "seed 0." in md.splitlines()[2]
    row = md_table(md, "Results per group")[0]
    assert "±" not in row["best test acc"]  # no std of one run
    assert "too few seeds for a test" in md


def test_report_cli(sweep_dir, tmp_path, capsys):
    d, _ = sweep_dir
    assert main(["report", str(d)]) == 0
    assert (d / "report.md").is_file()
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "DIR" in capsys.readouterr().err


def test_report_of_partial_sweep_says_what_is_missing(sweep_dir):
    d, runs = sweep_dir
    planned = [{"key": r["key"], "config": r["config"], "label": {}} for r in runs]
    planned.append({"key": "not-run-yet", "config": {}, "label": {}})
    (d / "study.json").write_text(json.dumps({"name": "fixture", "question": "Q?",
                                              "runs": planned}))
    md = write_report(d).read_text()
    assert "**1 have no result yet**" in md and "**Question.** Q?" in md
    assert re.search(r"The study plans 64 runs", md)


def test_which_devices_must_write_and_their_units():
    from grapes_hw.studies.analysis import pulses_unit, should_write

    def run(kind: str, **params) -> dict:
        return {"device_model": {"backend": kind, "params": params}, "config": {}}

    assert should_write(run("fixed", bits=4))
    assert should_write(run("analog", rpu_config="MixedPrecisionPCMPreset"))
    assert not should_write(run("analog", rpu_config="InferenceRPUConfig"))
    assert not should_write(run("analog", rpu_config="PCMPreset", count_pulses=False))
    assert not should_write(run("float", dtype="float32"))
    # old results: the unit from the backend kind (+ the digital bias); new ones as recorded
    assert pulses_unit(run("analog")) == "estimated programming steps"
    assert pulses_unit({**run("fixed"), "config": {"bias": True}}) == \
        "cells changed + writes (bias)"
    assert pulses_unit({**run("fixed"), "pulses_unit": "other"}) == "other"


def test_resolved_snu_settings_group_only_where_they_split_runs():
    """config.snu (SNU parameters with each model's defaults filled in) differs between an
    SNU and an sSNU by construction: it is not a grouping column then, nor a setting 'shared
    by all runs'. Where it varies within one model (a study of extra.snu) it groups."""
    from grapes_hw.studies.analysis import analyse

    backend = next(iter(BASE_ACC))

    def run(model, grapes, seed, threshold):
        r = make_run(backend, "sgd", grapes, 0.1, seed)
        r["key"] = f"{model}-{grapes}-{seed}-{threshold}"
        r["config"].update(model=model, snu={"threshold": threshold, "decay": 0.8})
        return r

    by_model = [run(m, g, s, 3.0 if m == "ssnu" else 1.0) for m in ("snu", "ssnu")
                for g in ("off", "propagating") for s in (0, 1)]
    an = analyse(by_model)
    assert "model" in an.group_fields and not any(f.startswith("snu") for f in an.group_fields)
    assert not any(k.startswith("snu") for k in an.fixed) and len(an.groups) == 4
    studied = by_model + [run("snu", g, s, 2.0) for g in ("off", "propagating") for s in (0, 1)]
    an2 = analyse(studied)
    assert any(f.startswith("snu") for f in an2.group_fields) and len(an2.groups) == 6


def test_a_cnn_architecture_record_is_no_grouping_column():
    """config.cnn (the resolved architecture) differs between an analog tile and a digital
    backend (exact_conv_kernels): that split follows the backend, so the table groups by
    backend alone (the cnn study's report had the whole record as a column)."""
    from grapes_hw.studies.analysis import analyse

    def run(backend, seed):
        r = make_run(backend, "sgd", "off", 0.1, seed)
        r["config"].update(model="cnn", cnn={"conv": "16:5", "exact_conv_kernels":
                                             backend != "fixed8"})
        return r

    an = analyse([run(b, s) for b in ("float32", "fixed8") for s in (0, 1)])
    assert an.group_fields == ["backend"] and "cnn" not in an.fixed and len(an.groups) == 2


def test_axis_labels_name_several_context_fields_backend_first_unset_left_out():
    """With a setting that only some backends use (PCM on a training subset), an x label
    reads "pcm-insitu, train_subset=10000" and "float32", not "10000 pcm-insitu" and
    "none float32"; a legend repeats no setting that is the same for every plotted run."""
    from grapes_hw.studies.analysis import analyse
    from grapes_hw.studies.plots import _same_in, context_text

    def run(backend, subset, seed):
        r = make_run(backend, "sgd", "off", 0.1, seed)
        r["config"]["train_subset"] = subset
        return r

    runs = [run("float32", None, s) for s in (0, 1)] + [run("fixed8", 500, s) for s in (0, 1)]
    an = analyse(runs)
    assert set(an.context_fields) == {"backend", "train_subset"}
    labels = {context_text(an, g.context) for g in an.groups}
    assert labels == {"float32", "fixed8, train_subset=500"}
    assert "train_subset" not in _same_in(an, an.runs)
    assert "train_subset" in _same_in(an, an.runs[:2])  # only float32's runs: all unset
    one = analyse([run("float32", None, s) for s in (0, 1)] + [run("fixed8", None, 0)])
    assert context_text(one, one.groups[0].context) == "float32"


def test_a_setting_with_one_value_per_device_goes_with_the_device_in_tuning_tables():
    """A tuning group's label names what tells groups apart; a setting that each device has
    one value of (train_subset only on PCM) is the device's, not the rule's, and an unset one
    is not printed ("sgd, train_subset=none" was)."""
    from grapes_hw.studies.report_tuning import _per_device, _rule_of

    def first(backend, opt):
        return {"config": {"backend": backend, "optimizer": opt, "grapes": "off"},
                "device_model": {"name": backend}}

    groups = [(first(b, o), {"backend": b, "optimizer": o, "train_subset": n,
                             "layers": [64] if o == "sgd" else [128]})
              for b, n in (("float32", None), ("pcm", 10000)) for o in ("sgd", "momentum")]
    per_device = _per_device(groups)
    assert per_device == {"train_subset"}  # layers differ within a device: the rule's
    assert _rule_of(*groups[0], per_device) == ("float32", "sgd, layers=64")
    assert _rule_of(*groups[3], per_device) == ("pcm, train_subset=10000", "momentum, layers=128")


def test_a_depth_study_gets_accuracy_and_slowness_vs_depth_per_width(tmp_path):
    """The paper's Fig. 4b-c: with ``layers`` the only varying setting and equal-width
    networks of several depths, acc_vs_depth.csv holds, per rule, width and depth, the same
    mean / std / n as the group; networks of unequal widths get no such plot."""
    from grapes_hw.studies.analysis import analyse
    from grapes_hw.studies.analysis import facts as facts_of
    from grapes_hw.studies.plots import acc_vs_depth

    def run(layers, grapes, seed):
        r = make_run("float32", "sgd", grapes, 0.1, seed)
        r["key"] = f"{layers}-{grapes}-{seed}"
        r["config"]["layers"] = layers
        r["best_test_acc"] = 0.8 + 0.01 * len(layers) + (0.02 if grapes != "off" else 0) \
            + 0.001 * seed + 0.0001 * layers[0]
        return r

    nets = [[8, 8], [8, 8, 8, 8], [16, 16], [16, 16, 16, 16], [16] * 6]
    runs = [run(n, g, s) for n in nets for g in ("off", "propagating") for s in (0, 1)]
    an = analyse(runs)
    rows = acc_vs_depth(an, facts_of(an), tmp_path / "d.png")
    assert rows is not None and (tmp_path / "d.png").is_file()
    acc = {(r[0], r[1], r[2]): r[4:] for r in rows if r[3] == "best_test_acc"}
    assert set(acc) == {(rule, w, d) for rule in ("sgd", "sgd + GRAPES (propagating)")
                        for w, d in ((8, 2), (8, 4), (16, 2), (16, 4), (16, 6))}
    for g in an.groups:
        w, d = int(g.context[0].split("-")[0]), len(g.context[0].split("-"))
        assert acc[(an.label_of(g.method), w, d)] == list(g.stat("best_test_acc"))
    assert acc[("sgd", 16, 6)][0] == pytest.approx(0.8 + 0.06 + 0.0005 + 0.0016)
    assert {r[3] for r in rows} == {"best_test_acc", "slowness"}
    mixed = analyse([run(n, "off", s) for n in ([8, 4], [8, 8]) for s in (0, 1)])
    assert acc_vs_depth(mixed, facts_of(mixed), tmp_path / "m.png") is None


def test_figure_titles_wrap_to_the_figure_width():
    """A title line longer than a narrow figure is wide is broken (it ran into the axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from grapes_hw.studies.analysis import Facts
    from grapes_hw.studies.plots import _title

    facts = Facts(datasets=["fashion-mnist"], networks=["CNN 1x28x28, conv 16:5,32:5 (each + "
                                                        "2x2 max pool), dense 1568-256-10"],
                  epochs=[10], epochs_run=(10, 10), seeds=[0, 1, 2], n_per_cell=(3, 3),
                  n_groups=8)
    fig = plt.figure(figsize=(5, 4))
    note = " (mean ± std over seeds, n = 1-3, marked where not 3; no bar where n = 1)"
    n = _title(fig, "Slowness of the plateau fit, accepted fits only (lower is faster)", facts,
               note)
    text = fig.texts[0].get_text()
    plt.close(fig)
    assert n == text.count("\n") + 1 and n > 3
    assert max(len(line) for line in text.split("\n")) <= 5 * 13
    assert text.replace("\n", " ").startswith("Slowness of the plateau fit")


def test_plot_labels_stay_short_for_a_study_of_architectures():
    """Equal hidden widths print as 4x128 on plot axes and panel titles, and a title lists
    the networks only while there are at most 3 (a depth study has them on the axis)."""
    from grapes_hw.studies.analysis import Facts
    from grapes_hw.studies.plots import compact

    assert compact("128-128-128-128") == "4x128" and compact("256-256") == "2x256"
    assert compact("256-128") == "256-128" and compact("fixed8") == "fixed8"
    assert compact("pcm-insitu-dac4") == "pcm-insitu-dac4"

    def line(nets):
        return Facts(datasets=["digits"], networks=nets, epochs=[5], epochs_run=(5, 5),
                     seeds=[0], n_per_cell=(1, 1), n_groups=1).line()

    assert "MLP 784-256-10 / MLP 784-128-10" in line(["MLP 784-256-10", "MLP 784-128-10"])
    many = line([f"MLP 784-{w}-10" for w in (64, 128, 256, 512)])
    assert "4 MLP networks" in many and "784-512" not in many
    subset = Facts(datasets=["fashion-mnist (60000 train, 10000 test samples)",
                             "fashion-mnist (10000 train, 10000 test samples)"],
                   networks=["MLP 784-10"], epochs=[5], epochs_run=(5, 5), seeds=[0],
                   n_per_cell=(1, 1), n_groups=2).line()
    assert subset.startswith("fashion-mnist, MLP") and "/ fashion" not in subset


def test_a_cnn_is_described_by_its_recorded_conv_stack():
    """The input width of a CNN's dense head does not come from the weight count (it was
    reported as "CNN ?-256-10"): the record's conv stack is shown instead."""
    from grapes_hw.studies.analysis import network_of

    cnn = {"conv": "16:5,32:5", "dense_in": 1568, "input_shape": [1, 28, 28],
           "padding": "same", "pool_size": 2, "pools": ["max", "max"], "stride": 1}
    run = {"config": {"model": "cnn", "layers": [256], "cnn": cnn},
           "dataset": {"n_classes": 10}, "memory": {"n_weights": 12345}}
    assert network_of(run) == ("CNN 1x28x28, conv 16:5,32:5 (each + 2x2 max pool), "
                               "dense 1568-256-10")
    cnn.update(pools=["max", None], padding="valid")
    assert network_of(run) == ("CNN 1x28x28, conv 16:5 + 2x2 max pool, 32:5, padding valid, "
                               "dense 1568-256-10")
    mlp = {"config": {"layers": [256]}, "dataset": {"n_classes": 10},
           "memory": {"n_weights": 784 * 256 + 256 * 10}}
    assert network_of(mlp) == "MLP 784-256-10"


def _grapes_run(backend, grapes, lr, seed, acc, **config):
    r = make_run(backend, "sgd", grapes, lr, seed)
    r["key"] = f"{backend}-{grapes}-{lr}-{seed}-{sorted(config.items())}"
    r["config"].update(config)
    r["best_test_acc"] = acc
    return r


def test_grapes_baseline_at_its_own_lr_and_grapes_only_settings_ignored(tmp_path):
    """Each rule at its own lr (the crossbar design): GRAPES at 0.02 against the one SGD group,
    at 0.05; an unbounded GRAPES (grapes_lower=none) against SGD, which records the default."""
    runs = [_grapes_run("float32", "off", 0.05, s, a, grapes_lower=1.0)
            for s, a in enumerate([0.85, 0.86, 0.855])]
    runs += [_grapes_run("float32", "propagating", 0.02, s, a, grapes_lower=g)
             for g, accs in ((1.0, [0.80, 0.81, 0.805]), (None, [0.84, 0.845, 0.85]))
             for s, a in enumerate(accs)]
    write_runs(tmp_path, runs)
    md = write_report(tmp_path).read_text()
    comps = read_csv(tmp_path / "comparisons.csv")
    assert len(comps) == 2 and {c["baseline"] for c in comps} == {"sgd, lr=0.05"}
    sgd = [0.85, 0.86, 0.855]
    for c, grapes in zip(comps, ([0.80, 0.81, 0.805], [0.84, 0.845, 0.85]), strict=True):
        p = stats.ttest_ind(grapes, sgd, equal_var=False).pvalue
        assert float(c["welch_p"]) == pytest.approx(p, rel=1e-9)
    assert "no baseline here" not in md


def test_grapes_without_a_unique_baseline_is_said_not_dropped(tmp_path):
    runs = [_grapes_run("float32", "off", lr, s, 0.85 + 0.001 * s)
            for lr in (0.1, 0.05) for s in range(2)]
    runs += [_grapes_run("float32", "propagating", 0.02, s, 0.84 + 0.001 * s) for s in range(2)]
    write_runs(tmp_path, runs)
    md = write_report(tmp_path).read_text()
    assert not (tmp_path / "comparisons.csv").exists()
    assert ("1 GRAPES group has no baseline here" in md
            and "sgd + GRAPES (propagating), lr=0.02" in md.split("no baseline here", 1)[1])


def test_one_seed_comparisons_are_untestable_not_losses(tmp_path):
    runs = [_grapes_run("float32", g, 0.1, 0, a) for g, a in (("off", 0.85), ("propagating", 0.87))]
    write_runs(tmp_path, runs)
    md = write_report(tmp_path).read_text()
    line = next(ln for ln in md.splitlines() if ln.startswith("- SGD + GRAPES is "))
    assert line.startswith("- SGD + GRAPES is not testable against SGD (fewer than 2 runs")
    assert "does not beat SGD" not in md and "worse" not in line


def test_a_diverged_run_has_no_final_accuracy_even_in_an_old_record(tmp_path):
    runs = [make_run("float32", "sgd", "off", 0.1, s) for s in range(3)]
    div = runs[2]  # as older versions stored it: the last finite epoch's accuracy as "final"
    div.update(status="diverged", diverged_epoch=EPOCHS)
    div["epochs"][-1]["test_acc"] = None
    div["final_test_acc"] = div["epochs"][-2]["test_acc"]
    write_runs(tmp_path, runs)
    write_report(tmp_path)
    row = read_csv(tmp_path / "summary.csv")[0]
    finals = [r["final_test_acc"] for r in runs[:2]]
    assert float(row["final_test_acc_mean"]) == pytest.approx(statistics.mean(finals))
    assert int(row["final_test_acc_n"]) == 2 and int(row["best_test_acc_n"]) == 3


def test_runs_on_an_older_version_of_their_device_model_are_warned_about(tmp_path):
    runs = [json.loads(json.dumps(make_run("fixed8", "sgd", "off", 0.1, s))) for s in range(2)]
    runs[1]["device_model"]["params"]["bits"] = 7  # what the model file said back then
    write_runs(tmp_path, runs)
    md = write_report(tmp_path).read_text()
    warn = [ln for ln in md.splitlines() if ln.startswith("> warning:") and "fixed8" in ln]
    assert len(warn) == 1 and "1 of the 2 runs on fixed8" in warn[0] and "bits 7 -> 8" in warn[0]
    runs[1]["device_model"]["params"]["bits"] = 8
    write_runs(tmp_path, runs)
    assert "> warning:" not in write_report(tmp_path).read_text()


def test_summary_covers_every_optimizer_with_grapes(tmp_path):
    """momentum + GRAPES is summarised against momentum, not left out of the summary."""
    runs = [_grapes_run("float32", g, lr, s, a + 0.003 * s, optimizer=opt)
            for opt, g, lr, a in (("sgd", "off", 0.1, 0.85), ("sgd", "propagating", 0.05, 0.86),
                                  ("momentum", "off", 0.005, 0.86),
                                  ("momentum", "propagating", 0.001, 0.84))
            for s in range(3)]
    write_runs(tmp_path, runs)
    md = write_report(tmp_path).read_text()
    lines = [ln for ln in md.splitlines() if " + GRAPES is " in ln and ln.startswith("- ")]
    assert any(ln.startswith("- SGD + GRAPES is significantly better than SGD in 1 setting")
               for ln in lines), lines
    assert any(ln.startswith("- momentum + GRAPES is significantly worse than momentum in 1 "
                             "setting") for ln in lines), lines


def test_shared_settings_that_act_on_no_run_are_listed_apart(tmp_path):
    """momentum = 0.9 of SGD-only runs (and the SNU time steps of an MLP) is recorded, not
    used: the report must not list it with the settings of the method."""
    runs = [_grapes_run("float32", g, 0.1, s, 0.85 + 0.003 * s, time_steps=20)
            for g in ("off", "propagating") for s in range(2)]
    write_runs(tmp_path, runs)
    md = write_report(tmp_path).read_text()
    shared = md.split("## Settings shared by all runs", 1)[1].split("\n\n")
    used, unused = shared[1], shared[2]
    assert "`optimizer=sgd`" in used and "momentum" not in used and "time_steps" not in used
    assert unused.startswith("Recorded but acting on none of these runs")
    assert "`momentum=0.9`" in unused and "`time_steps=20`" in unused
    # with a momentum run among them, momentum acts on some run: no longer listed apart
    runs += [_grapes_run("float32", "off", 0.01, s, 0.85, optimizer="momentum", time_steps=20)
             for s in range(2)]
    write_runs(tmp_path, runs)
    md = write_report(tmp_path).read_text()
    assert "`momentum=0.9`" not in md.split("Recorded but acting on none", 1)[-1].split("\n")[0]


@pytest.mark.parametrize("study, says", [
    ([1, 2], "not a study description"),
    ({"name": 5, "tune": "yes"}, "'name' is not a string"),
    ({"runs": 3}, "'runs' is not a list"),  # once crashed after the plots were rewritten
    ({"name": "other", "runs": [{"key": "elsewhere"}]}, "none of them among the"),
])
def test_a_study_json_that_is_not_these_runs_plan_is_ignored_with_a_warning(tmp_path, study,
                                                                             says):
    write_runs(tmp_path, [_grapes_run("float32", g, 0.1, s, 0.85) for g in ("off", "propagating")
                          for s in range(2)])
    (tmp_path / "study.json").write_text(json.dumps(study))
    md = write_report(tmp_path).read_text()
    assert md.startswith("# Report: sweep\n")  # not another study's title and question
    assert any(says in ln for ln in md.splitlines() if ln.startswith("> warning: ")), md[:2000]


def test_a_folder_of_failed_runs_has_no_empty_learning_curve_plot(tmp_path):
    from grapes_hw.studies.executors import error_record

    cfg = {"dataset": "digits", "layers": [8], "lr": 0.1, "backend": "float32"}
    write_runs(tmp_path, [error_record(f"k{s}", {**cfg, "seed": s}, "ValueError: boom",
                                       "ValueError") for s in range(2)])
    (tmp_path / "learning_curves.png").write_bytes(b"an older plot")
    md = write_report(tmp_path).read_text()
    assert not (tmp_path / "learning_curves.png").exists()
    assert "learning_curves.png" not in md and "no learning curves" in md
    assert "ValueError: boom" in md
