"""The tuning and device-state sections of ``grapes-hw report``.

* **Tuning** (studies with ``[tune]``): per group (backend x rule), the metric of every value
  tried (mean over the tuning seeds), the value chosen and why (``tuning.json``), and a plot
  of metric vs value per backend.
* **Device state**: from the per-layer records each epoch carries (``epochs[i]["layers"]``,
  see ``training.driver._layer_records``): per group and layer, the mean GRAPES factor the error
  carries, the share of devices near saturation after the first and the last epoch, pulses,
  pulsed writes and write-verify repeats per epoch, and seconds per epoch; a plot of the
  saturation over training; and, from the tuning runs, each rule at *equal* learning rates.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from grapes_hw.studies.analysis import (
    FINISHED,
    Analysis,
    Facts,
    disp,
    flat_config,
    fnum,
    mean_std,
    method_label,
    should_write,
    write_csv,
)

TUNING_FILE = "tuning.json"


def _md(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _run_metric(r: dict, metric: str) -> float:
    from grapes_hw.studies.tune import run_metric

    v = run_metric(r, metric)
    return math.nan if v is None else v


_RULE_KEYS = ("backend", "optimizer", "grapes", "lr_matched")


def _rule_of(run: dict, label: dict, per_device: frozenset = frozenset()) -> tuple[str, str]:
    """(device, rule) of a tuning group, from one of its runs' config (all settings, not only
    those that vary) and the group's label (other varying settings). Settings in
    ``per_device`` (one value per device, e.g. a training subset only PCM uses) go with the
    device, unset ones left out; the others with the rule."""
    c = run.get("config") or {}
    device = (run.get("device_model") or {}).get("name") or disp(c.get("backend", ""))
    head = method_label({"optimizer": disp(c.get("optimizer", "")),
                         "grapes": disp(c.get("grapes", "off")),
                         "lr_matched": disp(c.get("lr_matched", False))})
    rest = [f"{k}={disp(v)}" for k, v in label.items()
            if k not in _RULE_KEYS and k not in per_device]
    where = [f"{k}={disp(v)}" for k, v in label.items()
             if k in per_device and disp(v) != "none"]
    return ", ".join([device, *where]), ", ".join([head, *rest])


def _per_device(groups: list[tuple[dict, dict]]) -> frozenset:
    """Label settings with one value per device over the tuning groups ((first run, label)
    pairs): they describe the device's setting, not the rule."""
    values: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for run, label in groups:
        device = _rule_of(run, {})[0]
        for k, v in label.items():
            if k not in _RULE_KEYS:
                values[k][device].add(disp(v))
    return frozenset(k for k, by in values.items() if all(len(v) == 1 for v in by.values()))


# ---- tuning --------------------------------------------------------------------------------
def tuning_section(an: Analysis, d: Path, facts: Facts) -> tuple[list[str], list[str]]:
    """Markdown lines and files written (``tuning.csv``, ``tuning.png``); nothing without
    tuning runs."""
    runs = an.tune_runs
    if not runs:
        return [], []
    info = {}
    tp = d / TUNING_FILE
    if tp.is_file():
        info = json.loads(tp.read_text())
    tune = info.get("tune") or (an.study or {}).get("tune") or {}
    field, metric = tune.get("field", "lr"), tune.get("metric", "val_acc")
    groups = {g["group"]: g for g in info.get("groups", [])}
    by_group: dict[str, dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
    first: dict[str, dict] = {}
    for r in runs:
        by_group[r.get("tune_group", "?")][r.get("tune_value")].append(_run_metric(r, metric))
        first.setdefault(r.get("tune_group", "?"), r)
    values = list(tune.get("values") or sorted({v for g in by_group.values() for v in g}))
    header = ["backend", "rule", *[f"{field}={disp(v)}" for v in values], "chosen", "note"]
    rows, csv_rows = [], []
    order = [g for g in groups if g in by_group] + [g for g in by_group if g not in groups]
    per_device = _per_device([(first[gid], groups.get(gid, {}).get("label") or {})
                              for gid in order])
    for gid in order:
        g = groups.get(gid, {})
        device, rule = _rule_of(first[gid], g.get("label") or {}, per_device)
        cells = []
        for v in values:
            ms = by_group[gid].get(v, [])
            ok = [m for m in ms if math.isfinite(m)]
            mean = sum(ok) / len(ok) if ok and len(ok) == len(ms) else math.nan
            csv_rows.append([device, rule, v, mean,
                             len(ms), len(ms) - len(ok), g.get("value")])
            cell = "–" if not ms else ("failed" if math.isnan(mean) else f"{mean:.4f}")
            if ms and g.get("value") == v:
                cell = f"**{cell}**"
            cells.append(cell)
        chosen = g.get("value")
        note = g.get("note") or ""
        edge = edge_note(values, chosen) if not g.get("linked_to") else ""
        if edge and edge not in note:
            note = f"{note}; {edge}" if note else edge
        rows.append([device, rule, *cells,
                     "–" if chosen is None else disp(chosen), note])
    write_csv(d / "tuning.csv", ["backend", "rule", field, f"{metric}_mean", "n", "n_failed",
                                 "chosen"], csv_rows)
    files = ["tuning.csv"]
    tuning_facts = _tuning_facts(runs)
    if _tuning_plot(an, csv_rows, field, metric, tuning_facts, d / "tuning.png"):
        files.append("tuning.png")
    what = ("best validation accuracy over the epochs" if metric == "val_acc"
            else "validation accuracy after the last epoch")
    lines = ["## Tuning", "",
             f"Each group (backend x rule) first trained every {field} below on a seeded "
             f"validation split of the training set ({tuning_facts}); the metric is "
             f"`{metric}` ({what}), "
             "mean over the tuning seeds; the test set is not used. The chosen value "
             f"(bold) is the one the study's seeds run at{_seeded_note(an, groups, first)}."
             + (" lr-matched controls take the value tuned for SGD + GRAPES (propagating)."
                if any(g.get("linked_to") for g in groups.values()) else ""),
             "", _md(header, rows), ""]
    if "tuning.png" in files:
        lines += [f"![{metric} vs {field}](tuning.png)", ""]
    return lines, files


def _seeded_note(an: Analysis, groups: dict[str, dict], first: dict[str, dict]) -> str:
    """Says which tuned groups have no seed results yet (a sweep still running); ``first``:
    a tuning run of each group, for its name."""
    chosen = [g for g in groups.values() if g.get("value") is not None and g.get("label")]
    waiting = [g for g in chosen if not any(
        all((r.get("config") or {}).get(k) == v for k, v in g["label"].items())
        for r in an.runs)]
    if not waiting:
        return ""
    def name(g: dict) -> str:
        run = first.get(g["group"]) or first.get(g.get("linked_to") or "") or {}
        cfg = {**(run.get("config") or {}), **g["label"]}
        return " ".join(_rule_of({"config": cfg, "device_model": run.get("device_model")},
                                 g["label"]))

    names = "; ".join(name(g) for g in waiting)
    return (f" ({len(chosen) - len(waiting)} of the {len(chosen)} groups with a chosen value "
            f"have seed results so far; not yet: {names})")


def edge_note(values: list[Any], chosen: Any) -> str:
    """Said when the chosen value is the grid's smallest or largest: the best may lie out."""
    try:
        lo, hi = min(values), max(values)
    except (TypeError, ValueError):
        return ""
    if len(values) > 2 and chosen in (lo, hi):
        return "at the edge of the grid: the best value may lie outside it"
    return ""


def _tuning_facts(runs: list[dict]) -> str:
    cfgs = [r.get("config") or {} for r in runs]
    ds = [r.get("dataset") or {} for r in runs]
    ep = sorted({c.get("epochs") for c in cfgs if c.get("epochs") is not None})
    ntr = sorted({d.get("n_train") for d in ds if d.get("n_train") is not None})
    nva = sorted({d.get("n_val") for d in ds if d.get("n_val") is not None})
    seeds = sorted({c.get("seed") for c in cfgs if c.get("seed") is not None})
    return (f"{'/'.join(map(str, ep))} epochs, {'/'.join(map(str, ntr))} training and "
            f"{'/'.join(map(str, nva))} validation samples, seed{'s' if len(seeds) > 1 else ''} "
            f"{', '.join(map(str, seeds))}")


def _tuning_plot(an: Analysis, rows: list[list[Any]], field: str, metric: str, what: str,
                 path: Path) -> bool:
    from grapes_hw.studies.plots import COLORS, MARKERS, Style

    known: dict[str, tuple[str, str]] = {}
    if an.method_fields:  # the colours and markers the report's other figures use
        style = Style(an)
        known = {an.label_of(m): (style.color(m), style.marker(m)) for m in style.methods}

    pts = [r for r in rows if math.isfinite(fnum(r[3]))]
    if not pts:
        path.unlink(missing_ok=True)
        return False
    plt = _plt()
    backends = list(dict.fromkeys(r[0] for r in rows))
    rules = list(dict.fromkeys(r[1] for r in rows))
    ncols = min(len(backends), 4)
    nrows = -(-len(backends) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols + 2.4, 2.8 * nrows + 0.7),
                             sharey=True, squeeze=False, layout="constrained")
    flat_axes = [ax for row in axes for ax in row]
    for ax in flat_axes[len(backends):]:
        ax.set_visible(False)
    numeric = all(isinstance(r[2], (int, float)) for r in rows)
    for ax, b in zip(flat_axes, backends, strict=False):
        for i, rule in enumerate(rules):
            sel = [r for r in rows if r[0] == b and r[1] == rule]
            if not sel:
                continue
            color, marker = known.get(rule, (COLORS[i % len(COLORS)], MARKERS[i % len(MARKERS)]))
            xs = [r[2] for r in sel]
            ys = [fnum(r[3]) for r in sel]
            ax.plot(xs, ys, color=color, marker=marker, label=rule)
            chosen = [r for r in sel if r[2] == r[6]]
            for r in chosen:
                ax.plot([r[2]], [fnum(r[3])], marker="o", markersize=11, markerfacecolor="none",
                        markeredgecolor=color)
        if numeric:
            ax.set_xscale("log")
        ax.set_title(b, fontsize=9)
        ax.grid(alpha=0.3)
    for i, ax in enumerate(flat_axes[:len(backends)]):
        if i + ncols >= len(backends):  # no panel below it
            ax.set_xlabel(field)
    for row in axes:
        row[0].set_ylabel(f"{metric} (tuning runs)")
    handles, labels = flat_axes[0].get_legend_handles_labels()
    for ax in flat_axes[1:len(backends)]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False)
    fig.suptitle(f"Tuning: {metric} vs {field}, one tuning run per point (ring: the value "
                 f"chosen)\n{what}", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


# ---- device state --------------------------------------------------------------------------
LAYER_KEYS = ("carried", "near_saturation", "pulses", "writes", "write_repeats")


def _layers(r: dict) -> list[list[dict]]:
    return [e.get("layers") or [] for e in r.get("epochs") or [] if not e.get("partial")]


def _has_state(r: dict) -> bool:
    return any(any(k in L for k in ("near_saturation", "m_mean")) for ls in _layers(r)
               for L in ls)


def device_rows(an: Analysis) -> list[list[Any]]:
    """Per group and layer: mean over seeds of the per-run figures (see module docstring)."""
    rows = []
    for g in an.groups:
        runs = [r for r in g.finished() if _has_state(r)]
        if not runs:
            continue
        n_layers = max(len(ls) for r in runs for ls in _layers(r))
        for li in range(n_layers):
            per_run: dict[str, list[float]] = defaultdict(list)
            for r in runs:
                eps = [ls[li] for ls in _layers(r) if li < len(ls)]
                if not eps:
                    continue
                for k in ("carried", "m_mean"):
                    vals = [fnum(e.get(k)) for e in eps if e.get(k) is not None]
                    if vals:
                        per_run[k].append(sum(vals) / len(vals))
                sat = [fnum(e.get("near_saturation")) for e in eps
                       if e.get("near_saturation") is not None]
                if sat:
                    per_run["sat_first"].append(sat[0])
                    per_run["sat_last"].append(sat[-1])
                for k in ("pulses", "writes", "write_repeats"):
                    vals = [fnum(e.get(k)) for e in eps if e.get(k) is not None]
                    if vals:
                        per_run[k].append(sum(vals) / len(vals))
                secs = [fnum(e.get("seconds")) for e in r.get("epochs") or []
                        if not e.get("partial")]
                if secs and li == 0:
                    per_run["seconds"].append(sum(secs) / len(secs))
            stat = {k: mean_std(v)[0] for k, v in per_run.items()}
            rows.append([an.context_label(g), an.method_label(g), _lr_of(g), li + 1,
                         stat.get("carried", math.nan), stat.get("sat_first", math.nan),
                         stat.get("sat_last", math.nan), stat.get("pulses", math.nan),
                         stat.get("writes", math.nan), stat.get("write_repeats", math.nan),
                         stat.get("seconds", math.nan), len(runs)])
    return rows


def _lr_of(g) -> str:
    lrs = sorted({(r.get("config") or {}).get("lr_effective") or (r.get("config") or {}).get("lr")
                  for r in g.runs} - {None})
    return "/".join(f"{v:.3g}" for v in lrs)


def _f(v: float, spec: str) -> str:
    return "–" if not math.isfinite(v) else format(v, spec)


def device_section(an: Analysis, d: Path, facts: Facts) -> tuple[list[str], list[str]]:
    rows = device_rows(an)
    lines: list[str] = []
    files: list[str] = []
    if rows:
        write_csv(d / "device_state.csv",
                  ["context", "rule", "lr", "layer", "factor_carried", "near_saturation_first",
                   "near_saturation_last", "pulses_per_epoch", "writes_per_epoch",
                   "write_repeats_per_epoch", "seconds_per_epoch", "n"], rows)
        files.append("device_state.csv")
        md_rows = [[c, m, lr, li, _f(fc, ".2f"), _f(s0, ".4f"), _f(s1, ".4f"), _f(p, ".3g"),
                    _f(w, ".0f"), _f(wr, ".0f"), _f(s, ".1f") if li == 1 else "", n]
                   for c, m, lr, li, fc, s0, s1, p, w, wr, s, n in rows]
        lines += ["## Device state and write cost per layer", "",
                  "Per layer, mean over the seeds: the mean GRAPES factor the error carries at "
                  "that layer (the product of the mean factors of this and the later hidden "
                  "layers in the propagating version), the share of devices within 10% of their "
                  "bound after the first and the last epoch (PCM pairs: G+ or G- above 0.9 "
                  "w_max), pulses, pulsed writes (one per rank update or column-wise write) and "
                  "write-verify repeats per epoch, and seconds per epoch (whole network).", "",
                  _md(["context", "rule", "lr", "layer", "factor carried", "near sat. (first)",
                       "near sat. (last)", "pulses / epoch", "writes / epoch",
                       "write-verify repeats / epoch", "s / epoch", "n"], md_rows), ""]
        if _saturation_plot(an, facts, d / "saturation.png"):
            files.append("saturation.png")
            lines += ["![devices near saturation per epoch](saturation.png)", ""]
    eq = equal_lr_rows(an)
    if eq:
        write_csv(d / "equal_lr.csv", ["backend", "lr", "rule", "val_metric", "factor_carried_l1",
                                       "near_saturation_l1_last", "pulses_per_sample", "n"], eq)
        files.append("equal_lr.csv")
        lines += ["## Rules at equal learning rates (tuning runs)", "",
                  "The tuning runs train every rule at every value of the grid, so they show "
                  "the rules side by side at the same learning rate: validation accuracy, the "
                  "factor the first layer's error carries, the first layer's devices near "
                  "saturation after the last tuning epoch, and pulses per training sample "
                  "(devices programmed by writes only).", "",
                  _md(["backend", "lr", "rule", {"val_acc": "best val acc",
                                                  "final_val_acc": "final val acc"}[
                                                      tune_metric(an)],
                       "factor carried (layer 1)",
                       "near sat. (layer 1)", "pulses / sample", "n"],
                      [[b, f"{lr:g}", rule, _f(v, ".4f"), _f(fc, ".2f"), _f(s, ".4f"),
                        _f(p, ".3g"), n] for b, lr, rule, v, fc, s, p, n in eq]), ""]
    return lines, files


_NOT_A_SETTING = {"seed", "lr", "lr_effective", "lr_scale", "lr_source", "data_dir", "download",
                  "backend", "optimizer", "grapes", "lr_matched"}


def tune_metric(an: Analysis) -> str:
    """The metric the study's tuning chooses by (``val_acc``: best over the epochs, or
    ``final_val_acc``), so every table of tuning runs shows the same number."""
    tune = (an.study or {}).get("tune") or {}
    return tune.get("metric") if tune.get("metric") in ("val_acc", "final_val_acc") \
        else "val_acc"


def equal_lr_rows(an: Analysis) -> list[list[Any]]:
    """One row per (tuning group, lr): the group's runs at that lr (its tuning seeds). A rule
    is named with the settings that tell the tuning groups apart (e.g. ``layers=...``), so
    groups of other networks or datasets are never pooled into one row."""
    done = [r for r in an.tune_runs if r.get("status") in FINISHED and _layers(r)]
    flat = [flat_config(r.get("config") or {}) for r in done]
    varying = sorted(k for k in {k for f in flat for k in f} - _NOT_A_SETTING
                     if len({disp(f.get(k)) for f in flat}) > 1)
    cells: dict[tuple, list[dict]] = defaultdict(list)
    names: dict[tuple, tuple[str, str]] = {}
    for r, f in zip(done, flat, strict=True):
        c = r.get("config") or {}
        rule = method_label({"optimizer": c.get("optimizer", ""), "grapes": c.get("grapes", "off"),
                             "lr_matched": disp(c.get("lr_matched", False))})
        rule = ", ".join([rule, *(f"{k}={disp(f.get(k))}" for k in varying)])
        key = (r.get("tune_group", "?"), fnum(c.get("lr")))
        cells[key].append(r)
        names[key] = (disp(c.get("backend")), rule)
    rows = []
    for key, runs in sorted(cells.items(), key=lambda kv: (names[kv[0]][0], -kv[0][1])):
        (b, rule), lr = names[key], key[1]
        v, fc, s, p = [], [], [], []
        for r in runs:
            v.append(_run_metric(r, tune_metric(an)))
            first = [ls[0] for ls in _layers(r) if ls]
            fcs = [fnum(L.get("carried")) for L in first if L.get("carried") is not None]
            fc.append(sum(fcs) / len(fcs) if fcs else math.nan)
            sat = [fnum(L.get("near_saturation")) for L in first
                   if L.get("near_saturation") is not None]
            s.append(sat[-1] if sat else math.nan)
            n_train = (r.get("dataset") or {}).get("n_train") or math.nan
            n_ep = len(_layers(r)) or math.nan
            p.append(fnum(r.get("pulses_total")) / (n_train * n_ep) if should_write(r)
                     else math.nan)
        rows.append([b, lr, rule, mean_std(v)[0], mean_std(fc)[0], mean_std(s)[0],
                     mean_std(p)[0], len(runs)])
    return rows


def _saturation_plot(an: Analysis, facts: Facts, path: Path) -> bool:
    from grapes_hw.studies.plots import Style, context_text

    groups = [g for g in an.groups
              if any(L.get("near_saturation") is not None for r in g.finished()
                     for ls in _layers(r) for L in ls)]
    if not groups:
        path.unlink(missing_ok=True)
        return False
    plt = _plt()
    style = Style(an)
    ctxs = list(dict.fromkeys(g.context for g in groups))
    n_layers = max(len(ls) for g in groups for r in g.finished() for ls in _layers(r))
    fig, axes = plt.subplots(len(ctxs), n_layers, figsize=(2.9 * n_layers, 2.4 * len(ctxs) + 0.6),
                             sharex=True, sharey=True, squeeze=False, layout="constrained")
    for i, ctx in enumerate(ctxs):
        for li in range(n_layers):
            ax = axes[i][li]
            for g in (g for g in groups if g.context == ctx):
                curves = [[fnum(ls[li].get("near_saturation")) for ls in _layers(r)
                           if li < len(ls)] for r in g.finished()]
                curves = [c for c in curves if c]
                if not curves:
                    continue
                n_ep = min(len(c) for c in curves)
                ys = [sum(c[e] for c in curves) / len(curves) for e in range(n_ep)]
                kw = style.kw(g.method)
                ax.plot(range(1, n_ep + 1), ys, label=style.label(g.method), markersize=4, **kw)
            backend = {disp((r.get("config") or {}).get("backend")) for g in groups
                       if g.context == ctx for r in g.finished()}
            where = context_text(an, ctx) if ctx else "/".join(sorted(backend))
            ax.set_title(f"{where}, layer {li + 1}",
                         fontsize=8)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3)
            if li == 0:
                ax.set_ylabel("share near saturation")
            if i == len(ctxs) - 1:
                ax.set_xlabel("epoch")
    handles, labels = [], []
    for row in axes:
        for ax in row:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
    fig.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False)
    ns = [len(g.finished()) for g in groups]
    n_txt = f"{min(ns)}" if min(ns) == max(ns) else f"{min(ns)}-{max(ns)}"
    # (constrained layout places title and legend: a fixed y left a blank band, or an
    # overlap, depending on the number of rows)
    fig.suptitle(f"Devices within 10% of their bound, mean over n = {n_txt} seed"
                 f"{'s' if max(ns) > 1 else ''}\n{facts.line()}", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True
