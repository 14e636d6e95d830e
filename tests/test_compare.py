"""``grapes-hw compare``: result files side by side, only the settings that differ."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from grapes_hw.cli.main import main
from grapes_hw.training.metrics import plateau


def result(lr: float, backend: str, kind: str, curve: list[float], **kw) -> dict:
    cfg = {"dataset": "digits", "layers": [16], "backend": backend, "optimizer": "sgd",
           "grapes": "off", "lr": lr, "batch_size": 64, "epochs": len(curve), "seed": 0,
           "extra": {}}
    r = {"config": cfg,
         "device_model": {"name": backend, "backend": kind, "params": {}, "noise": None},
         "dataset": {"name": "digits", "source": "/somewhere", "n_train": 1347, "n_test": 450},
         "epochs": [{"epoch": i + 1, "test_acc": a, "pulses": 10} for i, a in enumerate(curve)],
         "best_test_acc": max(curve), "final_test_acc": curve[-1], "status": "ok",
         "slowness": 0.0, "plateau_fit": {"ok": True, "slowness": 0.0, "reason": ""},
         "pulses_total": 10 * len(curve), "optimizer_state_bytes": 0, "seconds_total": 2.5}
    r.update(kw)
    return r


def table(text: str) -> dict[str, list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return {cells[0]: cells[1:] for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in rows[2:])}


def test_compare_two_results(tmp_path, capsys):
    good = [float(v) for v in plateau(np.arange(1, 6), 0.9, 0.5)]
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    a.write_text(json.dumps(result(0.1, "float32", "float", good)))
    # an old result: no pulses_unit, a stored "ok" fit of a curve that never learned
    b.write_text(json.dumps(result(0.05, "fixed4-nearest", "fixed", [0.1] * 5,
                                   pulses_total=0)))
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    t = table(out)
    assert out.splitlines()[0] == "|  | a.json | b.json |"
    assert t["lr"] == ["0.1", "0.05"]
    assert t["backend"] == ["float32", "fixed4-nearest"]
    assert t["device.backend"] == ["float", "fixed"]
    assert "batch_size" not in t and "dataset" not in t  # shared settings left out
    assert t["best test acc"] == [f"{max(good):.4f}", "0.1000"]
    assert t["slowness"][0] == "0.500"
    assert t["slowness"][1].startswith("n/a (did not learn")
    assert t["pulses"] == ["50 writes", "0 cells changed"]  # unit inferred from the backend
    assert t["epochs run"] == ["5 of 5", "5 of 5"]
    assert t["flags"][0] == "none"
    assert "chance" in t["flags"][1] and "zero pulses" in t["flags"][1]
    assert "settings are the same in every run" in out

    assert main(["compare", "--all", str(a), str(b)]) == 0
    t = table(capsys.readouterr().out)
    assert t["batch_size"] == ["64", "64"]
    assert "dataset.source" not in t  # where the files were read from is not a setting


def test_compare_runs_jsonl_csv_and_same_names(tmp_path, capsys):
    curve = [float(v) for v in plateau(np.arange(1, 6), 0.8, 1.0)]
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    for d, lr in (("x", 0.1), ("y", 0.2)):
        (tmp_path / d / "result.json").write_text(json.dumps(result(lr, "float32", "float",
                                                                    curve)))
    lines = [json.dumps({"key": f"k{s}", **result(0.1, "float32", "float", curve, seed=s)})
             for s in (0, 1)]
    (tmp_path / "runs.jsonl").write_text("\n".join(lines) + "\n")
    out_file = tmp_path / "cmp.csv"
    assert main(["compare", "--format", "csv", "--out", str(out_file),
                 str(tmp_path / "x" / "result.json"), str(tmp_path / "y" / "result.json"),
                 str(tmp_path / "runs.jsonl")]) == 0
    assert "wrote" in capsys.readouterr().out
    rows = list(csv.reader(io.StringIO(out_file.read_text())))
    # two files named result.json: every label gets its folder
    assert rows[0] == ["setting", "x/result.json", "y/result.json",
                       f"{tmp_path.name}/runs.jsonl:k0", f"{tmp_path.name}/runs.jsonl:k1"]
    lr = next(r for r in rows if r[0] == "lr")
    assert lr[1:] == ["0.1", "0.2", "0.1", "0.1"]


def test_compare_bad_input(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hello": 1}))
    assert main(["compare", str(bad)]) == 2
    assert "not a run result" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert main(["compare", str(broken)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_hand_damaged_records_are_refused_naming_the_field(tmp_path, capsys):
    """A field of the wrong type once crashed compare/report deep inside (or, a string
    accuracy, was read as a result); now the record is refused, the field named."""
    curve = [0.5, 0.6]
    damaged = {"best_test_acc": "abc", "epochs": "x", "config": None,
               "epochs[1].test_acc": "bad"}
    for field, value in damaged.items():
        r = result(0.1, "float32", "float", curve)
        if field.startswith("epochs["):
            r["epochs"][0]["test_acc"] = value
        else:
            r[field] = value
        f = tmp_path / "r.json"
        f.write_text(json.dumps(r))
        assert main(["compare", str(f)]) == 2
        err = capsys.readouterr().err
        assert "not a run result" in err and field.split(".")[-1].split("[")[0] in err, err
        # in a runs.jsonl the line is left out (kept in the file), with a warning naming it,
        # and the good runs compared
        good = json.dumps({"key": "k0", **result(0.1, "float32", "float", curve)})
        runs = tmp_path / "runs.jsonl"
        runs.write_text(good + "\n" + json.dumps({"key": "k1", **r}) + "\n")
        assert main(["compare", str(runs)]) == 0
        captured = capsys.readouterr()
        assert "line 2 is not a valid result" in captured.err and "k1" not in captured.out
        assert "k0" in captured.out


def test_compare_module_imports_nothing_heavy():
    """The CLI imports it to build ``compare``'s parser; the work's imports wait for the
    command."""
    import subprocess
    import sys

    code = ("import sys, grapes_hw.studies.compare\n"
            "print(sorted(m for m in ('torch', 'matplotlib', 'numpy', 'scipy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent.parent).stdout
    assert out.strip() == "[]"


def test_keyless_results_files_twice_given_files_and_folders(tmp_path, capsys):
    """demo_results.jsonl (one run per line, no keys) was "holds no results"; the same file
    twice made two columns of one run; a folder was "no such file"."""
    curve = [0.5, 0.6]
    lines = [json.dumps({"label": lab, **result(lr, "float32", "float", curve)})
             for lab, lr in (("float32 SGD", 0.1), ("float32 momentum", 0.01))]
    f = tmp_path / "demo_results.jsonl"
    f.write_text("\n".join(lines) + "\n")
    assert main(["compare", str(f)]) == 0
    out = capsys.readouterr().out
    assert "demo_results.jsonl:float32 SGD" in out and "demo_results.jsonl:float32 momentum" in out
    r = tmp_path / "r.json"
    r.write_text(json.dumps(result(0.1, "float32", "float", curve)))
    assert main(["compare", str(r), str(r)]) == 2
    assert "given twice" in capsys.readouterr().err
    assert main(["compare", str(r), str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
