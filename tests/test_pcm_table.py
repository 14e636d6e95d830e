"""tools/pcm_table.py: the rule x backend table of docs/results.md from runs.jsonl."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("pcm_table", ROOT / "tools" / "pcm_table.py")
pcm_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pcm_table)


def run(backend, optimizer, grapes, seed, acc, lr=0.05, phase=None):
    curve = [acc * e / (0.5 + e) for e in range(1, 6)]
    r = {"key": f"{backend}-{optimizer}-{grapes}-{seed}-{lr}", "status": "ok",
         "config": {"backend": backend, "optimizer": optimizer, "grapes": grapes, "lr": lr,
                    "seed": seed, "lr_matched": False},
         "dataset": {"n_classes": 10},
         "epochs": [{"epoch": i + 1, "test_acc": a} for i, a in enumerate(curve)],
         "best_test_acc": max(curve), "pulses_total": 5e6, "pulses_unit": "writes",
         "memory": {"weight_digital_bytes": 1000}, "optimizer_state_bytes": 0}
    if phase:
        r["phase"] = phase
    return r


def test_table_rows_p_values_and_the_difference_to_a_reference_backend(tmp_path, capsys):
    accs = {("ref", "off"): [0.85, 0.86], ("ref", "propagating"): [0.84, 0.845],
            ("dac4", "off"): [0.80, 0.82], ("dac4", "propagating"): [0.83, 0.831]}
    recs = [run(b, "sgd", g, s, a) for (b, g), v in accs.items() for s, a in enumerate(v)]
    recs.append(run("ref", "sgd", "off", 0, 0.99, lr=0.2, phase="tune"))  # left out
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert pcm_table.main([str(tmp_path), "--vs-backend", "ref"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "Δ vs ref (Welch p)" in lines[0]
    rows = {tuple(c.strip() for c in ln.split("|")[1:3]): ln for ln in lines[2:]}
    assert list(rows)[0] == ("ref", "SGD")  # the reference backend first
    best = {k: [max(a * e / (0.5 + e) for e in range(1, 6)) for a in v]
            for k, v in accs.items()}
    for (b, g), rule in [(("dac4", "propagating"), "SGD + GRAPES (propagating)"),
                         (("dac4", "off"), "SGD")]:
        ln = rows[(b, rule)]
        ref = best[("ref", g)]
        d = 100 * (sum(best[(b, g)]) / 2 - sum(ref) / 2)
        q = stats.ttest_ind(best[(b, g)], ref, equal_var=False).pvalue
        assert ln.rstrip().endswith(f"{d:+.1f} ({q:.2g}) |")
    p_vs_sgd = stats.ttest_ind(best[("dac4", "propagating")], best[("dac4", "off")],
                               equal_var=False).pvalue
    assert f"| {p_vs_sgd:.2g} |" in rows[("dac4", "SGD + GRAPES (propagating)")]
    assert "| 2 | 0.05 |" in rows[("ref", "SGD")]  # the tuning run is not counted


def test_unknown_reference_backend_is_an_error(tmp_path):
    (tmp_path / "runs.jsonl").write_text(json.dumps(run("ref", "sgd", "off", 0, 0.8)) + "\n")
    with pytest.raises(SystemExit, match="has no runs here; backends: ref"):
        pcm_table.main([str(tmp_path), "--vs-backend", "nope"])


def test_folders_pool_and_a_key_in_two_folders_counts_twice(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    ra = [run("pcm", "sgd", "off", s, acc) for s, acc in enumerate([0.85, 0.852])]
    rb = [run("pcm", "sgd", "off", 0, 0.843), run("other", "sgd", "off", 0, 0.5)]
    (a / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ra))
    (b / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rb))
    assert pcm_table.main([str(a), str(b), "--backend", "pcm"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert len(rows) == 1 and "| pcm | SGD | 3 |" in rows[0]  # seed 0 twice: a replicate


def test_slowness_says_over_how_many_runs_when_a_fit_was_rejected():
    rs = [run("pcm", "sgd", "off", s, 0.85) for s in range(3)]
    for r, slow in zip(rs, [0.10, 0.20, None], strict=True):
        r["slowness"] = slow  # None: the plateau fit was rejected for that run
    row = pcm_table.table(rs)[2]
    assert "| 0.15 ± 0.07 (2 of 3 fits) |" in row
    for r in rs:
        r["slowness"] = 0.1
    assert "| 0.10 ± 0.00 |" in pcm_table.table(rs)[2]


def test_other_rules_are_listed_and_differing_settings_are_not_pooled():
    rs = [run("pcm", "sgd", "off", s, 0.85 + 0.002 * s) for s in range(2)]
    rs += [run("pcm", "adam", "off", s, 0.83 + 0.003 * s) for s in range(2)]
    rows = pcm_table.table(rs)[2:]
    assert [r.split("|")[2].strip() for r in rows] == ["SGD", "adam"]
    other = run("pcm", "sgd", "off", 2, 0.80)
    other["config"]["batch_size"] = 16  # another configuration, not a third seed
    with pytest.raises(SystemExit, match="pcm / SGD runs differ in batch_size"):
        pcm_table.table([*rs, other])
    older = run("pcm", "sgd", "off", 2, 0.80)
    rs[0]["config"]["conv"] = None  # a setting newer records hold: unset means null
    assert "| pcm | SGD | 3 |" in "\n".join(pcm_table.table([*rs, older]))
