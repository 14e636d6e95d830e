"""tools/depth_table.py: the width x depth table of docs/results.md from runs.jsonl."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from scipy import stats

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("depth_table", ROOT / "tools" / "depth_table.py")
depth_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(depth_table)


def run(layers, grapes, lr_matched, seed, acc):
    curve = [acc * e / (0.5 + e) for e in range(1, 11)]
    return {"key": f"{layers}-{grapes}-{lr_matched}-{seed}", "status": "ok",
            "config": {"layers": layers, "optimizer": "sgd", "grapes": grapes,
                       "lr_matched": lr_matched, "lr": 0.001, "seed": seed},
            "dataset": {"n_classes": 10},
            "epochs": [{"epoch": i + 1, "test_acc": a} for i, a in enumerate(curve)],
            "best_test_acc": max(curve)}


def test_rows_per_width_and_depth_with_differences_and_welch_p(tmp_path, capsys):
    accs = {"off": [0.80, 0.81, 0.82], "propagating": [0.85, 0.86, 0.88],
            "matched": [0.83, 0.83, 0.84]}
    recs = []
    for layers in ([8, 8], [8, 8, 8, 8], [16, 16]):
        for rule, values in accs.items():
            for s, a in enumerate(values):
                bump = 0.01 * (len(layers) - 2)
                recs.append(run(layers, "propagating" if rule == "propagating" else "off",
                                rule == "matched", s, a + bump))
    blown = run([16, 16], "propagating", False, 3, 0.9)
    blown.update(status="diverged", diverged_epoch=1, best_test_acc=None,
                 epochs=[{"epoch": 1, "test_acc": None, "partial": True}])
    recs.append(blown)  # diverged before its first test: counted, not in the means
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert depth_table.main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + 3
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [("8", "2", "3"), ("8", "4", "3"),
                                                  ("16", "2", "3")]
    best = [max(a * e / (0.5 + e) for e in range(1, 11)) for a in accs["off"]]
    mean = sum(best) / 3
    assert rows[0][3].startswith(f"{mean:.3f} ± ")
    g = [max((a + 0.02) * e / (0.5 + e) for e in range(1, 11)) for a in accs["propagating"]]
    s = [max((a + 0.02) * e / (0.5 + e) for e in range(1, 11)) for a in accs["off"]]
    p = stats.ttest_ind(g, s, equal_var=False).pvalue
    diff = 100 * (sum(g) - sum(s)) / 3
    assert rows[1][9] == f"{diff:+.1f} (p {p:.2g})"
    assert rows[2][11] == "GRAPES 1" and rows[0][11] == "–" and rows[2][2] == "3"


def test_a_folder_that_is_not_a_depth_study_exits_2(tmp_path, capsys):
    recs = [{**run([8], "off", False, s, 0.8), "key": f"{b}-{s}",
             "config": {**run([8], "off", False, s, 0.8)["config"], "backend": b}}
            for b in ("float32", "fixed8") for s in (0, 1)]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert depth_table.main([str(tmp_path)]) == 2
    assert "not a depth study" in capsys.readouterr().err
