"""CLI contract: bad values exit 2 with a message naming the option, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from grapes_hw.cli import main


def run_cli(*args, cwd=None):
    """The real console entry point in a fresh process (tracebacks would show here)."""
    return subprocess.run([sys.executable, "-m", "grapes_hw.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def call(capsys, *args):
    """``main`` in-process: returns (exit code, stderr); argparse errors raise SystemExit."""
    try:
        rc = main(list(args))
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("args, option", [
    (["--batch-size", "0"], "--batch-size"),
    (["--lr", "-1"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--layers", "256,x"], "--layers"),
    (["--optimizer", "adagrad"], "--optimizer"),
    (["--dataset", "cifar"], "--dataset"),
    (["--backend", "no/such/model.toml"], "--backend"),
    (["--backend", "nosuchmodel"], "--backend"),
    (["--epochs", "0"], "--epochs"),
    (["--dropout", "1.5"], "--dropout"),
    (["--grapes", "sometimes"], "--grapes"),
    (["--out", "/nonexistent/dir/result.json"], "--out"),
])
def test_bad_values_exit_2_naming_the_option(capsys, args, option):
    rc, err = call(capsys, "train", "--epochs", "1", "--quiet", *args)
    assert rc == 2, err
    assert option in err
    assert "Traceback" not in err


@pytest.mark.parametrize("args, option", [
    (["--batch-size", "0"], "--batch-size"),
    (["--backend", "nosuchmodel"], "--backend"),
])
def test_console_process_exits_2_without_traceback(args, option):
    p = run_cli("train", "--epochs", "1", *args)
    assert p.returncode == 2, p.stderr
    assert option in p.stderr
    assert "Traceback" not in p.stderr


def test_choice_errors_list_allowed_values(capsys):
    rc, err = call(capsys, "train", "--optimizer", "adagrad")
    assert rc == 2 and "sgd" in err and "momentum" in err


def test_bad_toml_key_named(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\ndescription = "d"\nbackend = "float"\n[float]\ndtyp = "float32"\n')
    rc, err = call(capsys, "train", "--backend", str(bad), "--epochs", "1")
    assert rc == 2
    assert "float.dtyp" in err and "dtype" in err


def test_train_writes_result_json(tmp_path):
    out = tmp_path / "r.json"
    rc = main(["train", "--dataset", "digits", "--layers", "32", "--epochs", "2", "--quiet",
               "--grapes", "propagating", "--out", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    for key in ("config", "epochs", "best_test_acc", "final_test_acc", "slowness", "status",
                "optimizer_state_bytes", "versions"):
        assert key in r
    assert r["status"] == "ok"
    assert [e["epoch"] for e in r["epochs"]] == [1, 2]
    assert set(r["epochs"][0]) >= {"epoch", "train_loss", "train_acc", "test_acc", "seconds"}
    assert r["config"]["grapes"] == "propagating" and r["config"]["layers"] == [32]
    assert r["best_test_acc"] == max(e["test_acc"] for e in r["epochs"])


def test_devices_lists_float32(capsys):
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    assert "float32" in out and "Ideal" in out


def test_train_subset_larger_than_dataset_is_rejected_before_training(capsys):
    rc, err = call(capsys, "train", "--dataset", "digits", "--train-subset", "5000")
    assert rc == 2
    assert "--train-subset" in err and "1..1347" in err
