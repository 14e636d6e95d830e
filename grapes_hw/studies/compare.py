"""``grapes-hw compare A.json B.json ...``: runs side by side.

Each file is one run's ``result.json`` (``grapes-hw train --out``) or a sweep's ``runs.jsonl``
(every run in it; the last record of each key). The table has a column per run and a row per
setting in which the runs differ (config, device model, dataset, versions; ``--all``: every
setting), then their metrics: best and final test accuracy, the plateau-fit slowness
(re-checked with today's rules, ``n/a`` and the reason when rejected), pulses with their
unit, optimizer memory, epochs run, status and flags (see ``studies.analysis.recheck``).
Output: a Markdown table (default) or CSV, on stdout or into ``--out``.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from grapes_hw.errors import ConfigError


def load_results(paths: list[str], warnings: list[str] | None = None
                 ) -> list[tuple[str, dict]]:
    """``(label, run)`` per run in the files; labels are file names, made unique. Lines of a
    runs.jsonl that are not results are left out, each with a message added to
    ``warnings``."""
    from grapes_hw.studies.store import latest_by_key, read_runs, record_problem

    out: list[tuple[Path, str, dict]] = []
    seen_files: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            raise ConfigError("FILE", f"{p} is a folder; give its runs.jsonl or result.json")
        if not p.is_file():
            raise ConfigError("FILE", f"no such file: {p}")
        if p.resolve() in seen_files:
            raise ConfigError("FILE", f"{p} is given twice")
        seen_files.add(p.resolve())
        if p.suffix == ".jsonl":
            # a sweep's runs.jsonl (keyed: a rerun replaces its earlier line) or any other
            # file of results, one per line (demo_results.jsonl: no keys, each line a run)
            records, skipped = read_runs(p, need_key=False)
            if warnings is not None:
                warnings += skipped
            keyed = latest_by_key([r for r in records if "key" in r])
            runs = [r for r in records if "key" not in r or keyed.get(r["key"]) is r]
            if not runs:
                raise ConfigError("FILE", f"{p} holds no results")
            out += [(p, f"{p.name}:{r.get('key', r.get('label', i + 1))}", r)
                    for i, r in enumerate(runs)]
            continue
        try:
            run = json.loads(p.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError("FILE", f"{p}: not valid JSON ({e})") from None
        problem = record_problem(run)
        if problem:
            raise ConfigError("FILE", f"{p}: not a run result ({problem}); expected the "
                                      "result.json of 'grapes-hw train --out' or a runs.jsonl")
        out.append((p, p.name, run))
    labels = [lab for _, lab, _ in out]
    if len(set(labels)) < len(labels):  # same names in different folders: add the folder
        labels = [f"{p.parent.name}/{lab}" for p, lab, _ in out]
    seen: dict[str, int] = {}
    for i, lab in enumerate(labels):
        seen[lab] = seen.get(lab, 0) + 1
        if labels.count(lab) > 1:
            labels[i] = f"{lab} #{seen[lab]}"
    return [(lab, r) for lab, (_, _, r) in zip(labels, out, strict=True)]


def settings(run: dict) -> dict[str, str]:
    """Every setting of a run, flattened: config, device model, dataset, versions."""
    from grapes_hw.studies.analysis import disp, flat_config

    out = {k: disp(v) for k, v in flat_config(run.get("config") or {}).items()}
    dm = run.get("device_model") or {}
    for k in ("name", "backend"):
        if k in dm:
            out[f"device.{k}"] = disp(dm[k])
    for part in ("params", "noise"):
        for k, v in (dm.get(part) or {}).items():
            out[f"device.{part}.{k}"] = disp(v)
    for k, v in (run.get("dataset") or {}).items():
        if k != "source":
            out[f"dataset.{k}"] = disp(v)
    for k, v in (run.get("versions") or {}).items():
        out[f"versions.{k}"] = disp(v)
    return out


def _num(v: Any, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else "–"


def metrics(run: dict) -> dict[str, str]:
    """The compared metrics of a run (after ``recheck``)."""
    fit = run.get("plateau_fit")
    if run.get("slowness") is not None:
        slowness = _num(run["slowness"], ".3f")
    elif fit:
        slowness = f"n/a ({fit.get('reason')})"
    else:
        slowness = "n/a"
    cfg = run.get("config") or {}
    done = sum(1 for e in run.get("epochs") or [] if not e.get("partial"))
    pulses = run.get("pulses_total")
    return {
        "best test acc": _num(run.get("best_test_acc"), ".4f"),
        "final test acc": _num(run.get("final_test_acc"), ".4f"),
        "slowness": slowness,
        "fitted max accuracy": _num((fit or {}).get("max_accuracy"), ".4f"),
        "pulses": f"{_num(pulses, '.4g')} {run.get('pulses_unit')}" if pulses is not None
        else "–",
        "optimizer state (B)": _num(run.get("optimizer_state_bytes"), "d"),
        "epochs run": f"{done} of {cfg.get('epochs', '?')}",
        "seconds": _num(run.get("seconds_total"), ".1f"),
        "status": str(run.get("status", "?")),
        "flags": "; ".join(f"{f}: {d}" for f, d in run.get("flags") or []) or "none",
    }


def compare_table(runs: list[tuple[str, dict]], all_settings: bool = False
                  ) -> tuple[list[str], list[list[str]], list[str]]:
    """``(header, rows, shared)``: a row per differing setting (every setting with
    ``all_settings``), then a row per metric; ``shared`` names the settings alike in all."""
    from grapes_hw.studies.analysis import recheck

    checked = [(lab, recheck(r)) for lab, r in runs]
    sets = [settings(r) for _, r in checked]
    names = list(dict.fromkeys(k for s in sets for k in s))
    differ = [k for k in names if len({s.get(k, "–") for s in sets}) > 1]
    shown = names if all_settings else differ
    header = ["", *(lab for lab, _ in checked)]
    rows = [[k, *(s.get(k, "–") for s in sets)] for k in shown]
    mets = [metrics(r) for _, r in checked]
    rows += [[k, *(m[k] for m in mets)] for k in mets[0]]
    return header, rows, [k for k in names if k not in differ]


def render(header: list[str], rows: list[list[str]], fmt: str = "md") -> str:
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["setting" if not h else h for h in header])
        w.writerows(rows)
        return buf.getvalue()
    esc = [[str(c).replace("|", "\\|") for c in r] for r in [header, *rows]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return "\n".join(lines) + "\n"
