"""Bad input and output paths, every command: exit 2 with a message naming the option or key,
no traceback, and nothing already on disk lost (a result, a table, another study's runs)."""

from __future__ import annotations

import json

import pytest
from conftest import call

from grapes_hw.cli.main import main

TINY = ["--dataset", "digits", "--layers", "8", "--epochs", "1", "--train-subset", "256",
        "--quiet", "--no-download"]



def refused(capsys, *args, option: str, says: str = "") -> str:
    rc, err = call(capsys, *args)
    assert rc == 2, err
    assert "Traceback" not in err
    assert option in err, err
    assert says in err, err
    return err


# ---- train --out ---------------------------------------------------------------------------
def test_train_out_must_be_a_writable_file_path_checked_before_training(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, says in ((tmp_path, "is a directory"),
                      (tmp_path / "no" / "r.json", "does not exist"),
                      (afile / "r.json", "is a file, not a directory")):
        refused(capsys, "train", *TINY, "--out", str(out), option="--out", says=says)
    assert afile.read_text() == "x"
    assert list(tmp_path.iterdir()) == [afile]  # no stray temporary file


def test_train_out_replaces_only_a_result_of_the_same_settings(capsys, tmp_path):
    out = tmp_path / "r.json"
    assert call(capsys, "train", *TINY, "--out", str(out))[0] == 0
    first = out.read_text()
    refused(capsys, "train", *TINY, "--seed", "1", "--out", str(out), option="--out",
            says="seed")
    assert out.read_text() == first  # another run's result is not overwritten
    assert call(capsys, "train", *TINY, "--out", str(out))[0] == 0  # a rerun replaces it
    assert json.loads(out.read_text())["config"]["seed"] == 0
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}')
    refused(capsys, "train", *TINY, "--out", str(notes), option="--out",
            says="not a grapes-hw result")
    assert notes.read_text() == '{"mine": 1}'


@pytest.mark.parametrize("layers", ["8,,8", "8,", ",8"])
def test_a_width_left_out_of_layers_is_refused(capsys, layers):
    refused(capsys, "train", "--layers", layers, option="--layers", says="empty width")


@pytest.mark.parametrize("args, option", [
    (["--grapes-bits", "4"], "--grapes-bits"),
    (["--grapes-ideal-read"], "--grapes-ideal-read"),
    (["--grapes-lower", "0.5"], "--grapes-lower"),
    (["--momentum", "0.5"], "--momentum"),
    (["--velocity-rounding", "stochastic", "--optimizer", "momentum"], "--velocity-rounding"),
    (["--time-steps", "5"], "--time-steps"),
    (["--test-time-steps", "5"], "--test-time-steps"),
    # spiking units have their own nonlinearity and bias: these trained the same network
    (["--model", "snu", "--activation", "tanh"], "--activation"),
    (["--model", "ssnu", "--bias"], "--bias"),
])
def test_train_options_that_would_change_nothing_are_refused(capsys, args, option):
    refused(capsys, "train", *TINY, *args, option=option, says="has no effect here")


def test_the_same_options_where_they_act_are_accepted(capsys):
    for args in (["--grapes", "local", "--grapes-bits", "4"],
                 ["--lr-matched", "--grapes-lower", "0.5"],
                 ["--optimizer", "nag", "--momentum", "0.5"]):
        assert call(capsys, "train", *TINY, *args)[0] == 0, args


def test_continual_passes_grapes_lower_to_the_rules_that_use_it(capsys, tmp_path):
    rc, err = call(capsys, "continual", "--dataset", "digits", "--layers", "8", "--tasks", "2",
                   "--epochs-per-task", "1", "--train-subset", "256", "--no-download",
                   "--quiet", "--no-plots", "--grapes-lower", "0.5", "--out",
                   str(tmp_path / "c"))
    assert rc == 0, err


def test_non_utf8_device_model_is_refused(capsys, tmp_path):
    bad = tmp_path / "latin1.toml"
    bad.write_bytes('description = "r\xe9sistance"\n'.encode("latin-1"))
    refused(capsys, "train", *TINY, "--backend", str(bad), option="--backend", says="UTF-8")
    refused(capsys, "devices", str(bad), option="NAME", says="UTF-8")


@pytest.mark.parametrize("lr", ["1e50", "2e6"])
def test_an_lr_that_overflows_the_update_is_refused(capsys, tmp_path, lr):
    # 1e50 once reached the backend and died in float32 arithmetic (a traceback)
    refused(capsys, "train", *TINY, "--lr", lr, "--out", str(tmp_path / "r.json"),
            option="--lr", says="(0, 1e+06]")
    assert not (tmp_path / "r.json").exists()


def test_a_model_too_large_for_memory_is_an_error_not_a_traceback(capsys, monkeypatch):
    import grapes_hw.training.train as train

    def no_memory(*args, **kwargs):  # what torch's allocator raises for a huge --layers
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 25600000000 bytes.")

    monkeypatch.setattr(train, "run", no_memory)
    refused(capsys, "train", *TINY, option="out of memory", says="--layers")

    def bug(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(train, "run", bug)  # any other RuntimeError is a bug: it propagates
    with pytest.raises(RuntimeError, match="shapes"):
        call(capsys, "train", *TINY)


# ---- studies -------------------------------------------------------------------------------
STUDY = """
[study]
name = "{name}"
[base]
dataset = "digits"
layers = [8]
epochs = 1
train_subset = 256
download = false
[axes]
lr = [0.1, 0.05]
[quick]
epochs = 1
"""


def study(tmp_path, text: str, name: str = "s.toml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("body, key, says", [
    ('[base]\ndataset = "digits"\nseed = -1\n', "base.seed", "must be in 0..2**32-1"),
    ('[base]\ndataset = "digits"\n[axes]\nseed = [0, -1]\n', "axes.seed", "must be in 0..2**32-1"),
    ('[base]\ndataset = "digits"\n[tune]\nseed = [0, 1]\n', "tune.seed", "cannot be tuned"),
    ('[base]\ndataset = "digits"\n[tune]\ndataset = ["digits"]\n', "tune.dataset",
     "cannot be tuned"),
    ('[base]\ndataset = "digits"\n[tune]\nlayers = [[8], [16]]\n', "tune.layers",
     "cannot be tuned"),
    ('[base]\ndataset = "digits"\n[tune]\nepochs = [1, 2]\n', "tune.epochs",
     "cannot be tuned"),
    ('[base]\ndataset = "digits"\n[tune]\nmomentum = [0.5, 0.9]\n', "tune",
     "no effect on runs with optimizer 'sgd'"),
    ('[base]\ndataset = "digits"\n[base.extra.snuu]\ndecay = 0.5\n', "base.extra",
     "unknown section"),
    ('[base]\ndataset = "digits"\n[base.extra.snu]\ndecay = 0.5\n', "base.extra",
     "model snu or ssnu"),
    ('[base]\ndataset = "digits"\noptimizer = "adam"\n[base.extra.optimizer]\nepz = 1e-8\n',
     "base.extra", "not an option of optimizer 'adam'"),
    ('[base]\ndataset = "digits"\noptimizer = "adam"\n[base.extra.optimizer]\neps = -1.0\n',
     "base.extra", "eps"),
    ('', "study", "empty"),
    # a split that leaves nothing to train on: caught by --dry-run, not by the workers
    ('[base]\ndataset = "digits"\ntrain_subset = 1\nval_fraction = 0.5\n', "base.val_fraction",
     "leaves no training samples"),
    ('[base]\ndataset = "digits"\ntrain_subset = 99999\n', "base.train_subset", "1..1347"),
    ('[base]\ndataset = "digits"\n[tune]\nlr = [0.1, 0.2]\ntrain_subset = 2\n'
     'val_fraction = 0.8\n', "tune.val_fraction", "leaves no training samples"),
    # an exclude rule that drops nothing (a typo'd value) or has an empty list
    ('[base]\ndataset = "digits"\n[axes]\ngrapes = ["off", "propagating"]\n[[exclude]]\n'
     'grapes = "local"\n', "exclude[0]", "matches no run"),
    ('[base]\ndataset = "digits"\n[axes]\ngrapes = ["off", "propagating"]\n[[exclude]]\n'
     'grapes = []\n', "exclude[0].grapes", "empty list"),
    # the same field on two axes: the later would override the earlier in every run
    ('[base]\ndataset = "digits"\n[axes]\nlr = [0.1, 0.2]\n[[variants]]\nlr = 0.5\n',
     "variants", "which axes.lr also sets"),
    ('[base]\ndataset = "digits"\n[axes]\nlr = [0.1, 0.2]\n[zip.g]\nlr = [0.3, 0.4]\n'
     'seed = [0, 1]\n', "zip.g", "which axes.lr also sets"),
])
def test_bad_study_values_are_refused_naming_the_key(capsys, tmp_path, body, key, says):
    refused(capsys, "sweep", study(tmp_path, body), "--dry-run", "--out",
            str(tmp_path / "o"), option=key, says=says)


def test_valid_tuning_and_optimizer_options_are_accepted(capsys, tmp_path):
    body = ('[base]\ndataset = "digits"\noptimizer = "momentum"\n[tune]\nmomentum = [0.5, 0.9]'
            '\n[[variants]]\ngrapes = "off"\n[[variants]]\ngrapes = "local"\n')
    assert call(capsys, "sweep", study(tmp_path, body), "--dry-run", "--out",
                str(tmp_path / "o"))[0] == 0
    body = '[base]\ndataset = "digits"\noptimizer = "adam"\n[base.extra.optimizer]\neps = 1e-6\n'
    assert call(capsys, "sweep", study(tmp_path, body), "--dry-run", "--out",
                str(tmp_path / "o2"))[0] == 0


def test_quick_without_a_quick_table_is_refused(capsys, tmp_path):
    refused(capsys, "sweep", study(tmp_path, '[base]\ndataset = "digits"\n'), "--quick",
            "--dry-run", option="--quick", says="no (or an empty) [quick] table")


def test_non_utf8_study_is_refused(capsys, tmp_path):
    p = tmp_path / "s.toml"
    p.write_bytes('[study]\ndescription = "r\xe9sum\xe9"\n'.encode("latin-1"))
    refused(capsys, "sweep", str(p), "--dry-run", option="study", says="UTF-8")


def test_sweep_out_must_be_a_folder(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    s = study(tmp_path, STUDY.format(name="a"))
    for extra in (["--dry-run"], []):
        refused(capsys, "sweep", s, "--out", str(afile), *extra, option="--out",
                says="not a directory")
        refused(capsys, "sweep", s, "--out", str(afile / "sub"), *extra, option="--out",
                says="is a file")
    assert afile.read_text() == "x"


def test_sweep_refuses_the_folder_of_another_study(capsys, tmp_path):
    out = tmp_path / "o"
    assert call(capsys, "sweep", study(tmp_path, STUDY.format(name="a"), "a.toml"),
                "--workers", "1", "--quiet", "--out", str(out))[0] == 0
    runs, sj = (out / "runs.jsonl").read_text(), (out / "study.json").read_text()
    b = study(tmp_path, STUDY.format(name="b"), "b.toml")
    for extra in (["--dry-run"], ["--quiet"]):
        refused(capsys, "sweep", b, "--out", str(out), *extra, option="--out",
                says="holds the results of study 'a'")
    refused(capsys, "sweep", study(tmp_path, STUDY.format(name="a"), "a.toml"), "--quick",
            "--out", str(out), option="--out", says="(quick)")
    assert (out / "runs.jsonl").read_text() == runs and (out / "study.json").read_text() == sj


def test_sweep_keeps_complete_lines_that_are_not_results(capsys, tmp_path):
    out = tmp_path / "o"
    s = study(tmp_path, STUDY.format(name="a"))
    assert call(capsys, "sweep", s, "--workers", "1", "--quiet", "--out", str(out))[0] == 0
    runs = out / "runs.jsonl"
    note = b'{"note": "checked by hand"}\n'
    runs.write_bytes(runs.read_bytes() + note + b'{"key": "abc", "sta')  # + a torn line
    rc, err = call(capsys, "sweep", s, "--workers", "1", "--quiet", "--out", str(out))
    assert rc == 0, err
    data = runs.read_bytes()
    assert data.endswith(note)  # the hand-written line is kept; only the torn tail was cut
    assert len(data.splitlines()) == 3


def test_scheduler_that_is_not_an_address_is_refused(capsys, tmp_path):
    pytest.importorskip("distributed")
    refused(capsys, "sweep", study(tmp_path, STUDY.format(name="a")), "--scheduler",
            "notaurl", "--quiet", "--out", str(tmp_path / "o"), option="--scheduler",
            says="cannot connect")


@pytest.mark.parametrize("dask", [["--dask-local", "2"], ["--scheduler", "tcp://h:8786"]])
def test_workers_with_dask_is_refused_not_ignored(capsys, tmp_path, dask):
    refused(capsys, "sweep", study(tmp_path, STUDY.format(name="a")), "--workers", "4", *dask,
            "--out", str(tmp_path / "o"), option="--workers", says="Dask")
    assert not (tmp_path / "o").exists()


# ---- compare, continual, demo, report ------------------------------------------------------
def test_compare_out_never_destroys_its_inputs(capsys, tmp_path):
    r = tmp_path / "r.json"
    assert call(capsys, "train", *TINY, "--out", str(r))[0] == 0
    before = r.read_text()
    refused(capsys, "compare", str(r), "--out", str(r), option="--out",
            says="one of the files compared")
    assert r.read_text() == before
    refused(capsys, "compare", str(r), "--out", str(tmp_path), option="--out",
            says="is a directory")
    refused(capsys, "compare", str(r), "--out", str(tmp_path / "no" / "t.md"), option="--out",
            says="does not exist")
    assert call(capsys, "compare", str(r), "--out", str(tmp_path / "t.md"))[0] == 0


@pytest.mark.parametrize("command", [["demo", "--quick"], ["continual", "--tasks", "2"],
                                     ["train", *TINY], ["compare", "a.json"]])
def test_an_empty_out_is_refused_not_the_current_folder(capsys, command):
    refused(capsys, *command, "--out", "", option="--out", says="is empty")


def test_continual_bad_out_and_one_task_are_refused(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    refused(capsys, "continual", "--out", str(afile / "x"), option="--out", says="is a file")
    refused(capsys, "continual", "--tasks", "1", "--out", str(tmp_path / "c"), option="tasks",
            says=">= 2")


def test_demo_out_must_be_a_folder(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    refused(capsys, "demo", "--out", str(afile), option="--out", says="not a directory")
    refused(capsys, "demo", "--out", str(afile / "x"), option="--out", says="is a file")


@pytest.mark.parametrize("inside_a_run", [False, True])
def test_an_interrupted_demo_keeps_the_previous_results(capsys, tmp_path, monkeypatch,
                                                        inside_a_run):
    import grapes_hw.cli.demo as demo

    (tmp_path / "demo_results.jsonl").write_text('{"label": "earlier"}\n')
    calls = []

    def stop_at_second(cfg):
        if calls:
            if inside_a_run:  # run() catches the signal and returns what it has
                return {"status": "interrupted", "best_test_acc": 0.3, "epochs": []}
            raise KeyboardInterrupt
        calls.append(cfg)
        return {"best_test_acc": 0.5, "epochs": []}

    monkeypatch.setattr(demo, "run", stop_at_second)
    rc, _ = call(capsys, "demo", "--quick", "--out", str(tmp_path))
    assert rc == 130
    assert (tmp_path / "demo_results.jsonl").read_text() == '{"label": "earlier"}\n'


def test_report_that_cannot_write_a_file_names_it(capsys, tmp_path):
    out = tmp_path / "o"
    assert call(capsys, "sweep", study(tmp_path, STUDY.format(name="a")), "--workers", "1",
                "--quiet", "--out", str(out))[0] == 0
    (out / "summary.csv").unlink(missing_ok=True)
    (out / "summary.csv").mkdir()
    refused(capsys, "report", str(out), option="summary.csv", says="Is a directory")


def test_compare_out_never_replaces_a_result(capsys, tmp_path):
    r1, r2 = tmp_path / "r1.json", tmp_path / "r2.json"
    assert call(capsys, "train", *TINY, "--out", str(r1))[0] == 0
    assert call(capsys, "train", *TINY, "--lr", "0.05", "--out", str(r2))[0] == 0
    before = r2.read_text()
    refused(capsys, "compare", str(r1), "--out", str(r2), option="--out",
            says="holds run results")
    assert r2.read_text() == before


def test_demo_refuses_a_sweep_folder(capsys, tmp_path):
    (tmp_path / "runs.jsonl").write_text("")
    refused(capsys, "demo", "--quick", "--out", str(tmp_path), option="--out",
            says="holds a sweep's results")


@pytest.mark.parametrize("name", ["../../escape", "", ".", "/tmp/x", "a/b"])
def test_study_name_is_a_folder_name_not_a_path(capsys, tmp_path, name):
    refused(capsys, "sweep", study(tmp_path, STUDY.format(name=name)), "--dry-run",
            option="study.name", says="names the results folder")


def test_drift_eval_on_a_digital_backend_fails_before_training(capsys):
    rc = main(["train", "--dataset", "digits", "--layers", "8", "--epochs", "1",
               "--train-subset", "256", "--no-download", "--drift-eval"])
    out, err = capsys.readouterr()
    assert rc == 2 and "--drift-eval" in err and "inference tile" in err
    assert "epoch" not in out  # refused before the first epoch, not after training


@pytest.mark.parametrize("option, value", [("--seeds", "0,0"), ("--seeds", "0,,1"),
                                           ("--rules", "sgd,sgd"),
                                           ("--backends", "float32,,fixed8")])
def test_continual_lists_have_no_empty_or_repeated_items(capsys, option, value):
    refused(capsys, "continual", option, value, option=option)


def test_a_tuned_field_set_elsewhere_and_an_empty_quick_table_are_refused(capsys, tmp_path):
    tuned = '[base]\ndataset = "digits"\nlr = 0.3\n[tune]\nlr = [0.1, 0.05]\n'
    refused(capsys, "sweep", study(tmp_path, tuned), "--dry-run", "--out", str(tmp_path / "o"),
            option="base.lr", says="[tune] chooses")
    pinned = '[base]\ndataset = "digits"\n[tune]\nlr = [0.1, 0.05]\n[quick]\nlr = 0.1\n'
    refused(capsys, "sweep", study(tmp_path, pinned), "--quick", "--dry-run", "--out",
            str(tmp_path / "o"), option="quick.lr", says="[tune] chooses")
    refused(capsys, "sweep", study(tmp_path, '[base]\ndataset = "digits"\n[quick]\n'),
            "--quick", "--dry-run", option="--quick", says="empty")
