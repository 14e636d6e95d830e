"""Reports of a sweep folder: ``grapes-hw report DIR`` -> ``DIR/report.md``, CSV tables, PNGs.

Runs are read from ``DIR/runs.jsonl`` (the last record of each key counts) and grouped by
every setting that varies between them except the seed. Per group the report gives the
paper's numbers: best test accuracy over the epochs, mean and standard deviation over seeds
(sample std, ddof=1; empty for a single run), and the plateau-equation slowness; it counts the
runs, flags diverged and failed ones, names the best optimizer of each setting and says, with
a Welch t-test over seeds, whether GRAPES beats its plain baseline (same optimizer, GRAPES off)
or not.

Files written (all in DIR): ``report.md``; ``summary.csv`` (one row per group),
``learning_curves.csv``, ``comparisons.csv``, and when the data has them ``acc_vs_bits.csv``,
``acc_vs_noise.csv``, ``drift.csv``; plots ``best_test_acc.png``, ``slowness.png``,
``learning_curves.png``, ``pulses.png``, ``optimizer_memory.png`` and, when the data has them,
``acc_vs_bits.png``, ``acc_vs_noise.png``, ``drift.png``.

Which settings are "method" (compared within a group) and which are "context": the fields
in ``METHOD_FIELDS`` (optimizer, GRAPES mode, learning rate, ...) make the method; every other
varying field (device model, dataset, layers, credit rule, ...) is the context.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError
from .sweep import RUNS_FILE, STUDY_FILE, _flat_config, latest_by_key, read_runs

METHOD_FIELDS = ("optimizer", "grapes", "lr", "momentum", "lr_matched", "grapes_lower",
                 "grapes_bits", "grapes_ideal_read")
"""Settings that define the learning method compared within each context."""

IGNORED_FIELDS = ("seed", "data_dir", "download", "lr_effective", "lr_scale")
"""Settings never used for grouping (seeds are what mean/std run over)."""

FINISHED = ("ok", "diverged")
"""Statuses whose metrics enter the means (a diverged run keeps its best epoch before)."""


# ---- helpers -------------------------------------------------------------------------------
def _disp(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "-".join(_disp(x) for x in v)
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _natural(s: str):
    return [(0, float(t), "") if re.fullmatch(r"\d+(\.\d+)?", t) else (1, 0.0, t)
            for t in re.findall(r"\d+(?:\.\d+)?|\D+", s)]


def _fnum(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def mean_std(values: list[float]) -> tuple[float, float, int]:
    """Mean and sample std (ddof=1; nan for a single value) over the finite values."""
    a = np.array([v for v in (_fnum(x) for x in values) if math.isfinite(v)], dtype=float)
    if a.size == 0:
        return math.nan, math.nan, 0
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else math.nan, int(a.size)


def _fmt(m: float, s: float, digits: int = 4) -> str:
    if not math.isfinite(m):
        return "–"
    return f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if math.isfinite(s) else "")


def _csv_num(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return ""
    return repr(v) if isinstance(v, float) else v


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow([_csv_num(v) for v in r])


def device_bits(run: dict) -> float | None:
    dm = run.get("device_model") or {}
    params = dm.get("params") or {}
    bits = params.get("bits")
    return float(bits) if isinstance(bits, (int, float)) and not isinstance(bits, bool) else None


def device_noise(run: dict) -> tuple[float, float]:
    """(read_sigma, write_sigma) of the run's device model; 0 where it has no noise."""
    noise = (run.get("device_model") or {}).get("noise") or {}
    return (_fnum(noise.get("read_sigma") or 0.0), _fnum(noise.get("write_sigma") or 0.0))


def _is_float_device(run: dict) -> bool:
    return (run.get("device_model") or {}).get("backend") == "float"


# ---- grouping ------------------------------------------------------------------------------
@dataclass
class Group:
    values: dict[str, str]
    """Group field -> display value."""
    runs: list[dict] = field(default_factory=list)
    context: tuple = ()
    method: tuple = ()

    def finished(self) -> list[dict]:
        return [r for r in self.runs if r.get("status") in FINISHED]

    def count(self, status: str) -> int:
        return sum(1 for r in self.runs if r.get("status") == status)

    def stat(self, metric: str) -> tuple[float, float, int]:
        return mean_std([r.get(metric) for r in self.finished()])

    def values_of(self, metric: str) -> list[float]:
        return [v for v in (_fnum(r.get(metric)) for r in self.finished()) if math.isfinite(v)]


@dataclass
class Analysis:
    runs: list[dict]
    groups: list[Group]
    group_fields: list[str]
    method_fields: list[str]
    context_fields: list[str]
    fixed: dict[str, str]
    study: dict | None
    warnings: list[str]

    def method_label(self, g: Group) -> str:
        return method_label(dict(zip(self.method_fields, g.method, strict=False)))

    def context_label(self, g: Group) -> str:
        pairs = zip(self.context_fields, g.context, strict=True)
        return " ".join(f"{k}={v}" for k, v in pairs) or "all runs"


def method_label(m: dict[str, str]) -> str:
    """e.g. ``momentum + GRAPES (propagating), lr=0.01``."""
    if not m:
        return "all"
    head = m.get("optimizer") or ""
    grapes = m.get("grapes")
    if grapes is not None and grapes != "off":
        head = f"{head} + GRAPES ({grapes})" if head else f"GRAPES ({grapes})"
    elif grapes == "off" and not head:
        head = "no GRAPES"
    if m.get("lr_matched") == "true":
        head += " (lr-matched control)"
    rest = [f"{k}={v}" for k, v in m.items() if k not in ("optimizer", "grapes", "lr_matched")]
    return ", ".join(p for p in [head, *rest] if p)


def _run_fields(run: dict) -> dict[str, str]:
    cfg = run.get("config") or {}
    flat = _flat_config(cfg)
    return {k: _disp(v) for k, v in flat.items() if k not in IGNORED_FIELDS}


def analyse(runs: list[dict], study: dict | None = None,
            warnings: list[str] | None = None) -> Analysis:
    fields_per_run = [_run_fields(r) for r in runs]
    names: list[str] = []
    for f in fields_per_run:
        for k in f:
            if k not in names:
                names.append(k)
    varying = [k for k in names if len({f.get(k, "none") for f in fields_per_run}) > 1]
    fixed = {k: fields_per_run[0].get(k, "none") for k in names if k not in varying} \
        if fields_per_run else {}
    method_fields = [k for k in METHOD_FIELDS if k in varying]
    context_fields = [k for k in varying if k not in method_fields]
    group_fields = context_fields + method_fields
    by_key: dict[tuple, Group] = {}
    for r, f in zip(runs, fields_per_run, strict=False):
        vals = tuple(f.get(k, "none") for k in group_fields)
        g = by_key.get(vals)
        if g is None:
            g = by_key[vals] = Group(dict(zip(group_fields, vals, strict=False)))
            g.context = vals[:len(context_fields)]
            g.method = vals[len(context_fields):]
        g.runs.append(r)
    groups = sorted(by_key.values(),
                    key=lambda g: [_natural(v) for v in (*g.context, *g.method)])
    return Analysis(runs, groups, group_fields, method_fields, context_fields, fixed, study,
                    list(warnings or []))


def load(dir_: str | Path) -> Analysis:
    d = Path(dir_)
    if not d.is_dir():
        raise ConfigError("DIR", f"not a directory: {d}")
    path = d / RUNS_FILE
    if not path.is_file():
        raise ConfigError("DIR", f"no {RUNS_FILE} in {d}; run 'grapes-hw sweep' first")
    records, warnings = read_runs(path)
    runs = list(latest_by_key(records).values())
    if not runs:
        raise ConfigError("DIR", f"{path} holds no results yet")
    study = None
    sp = d / STUDY_FILE
    if sp.is_file():
        try:
            study = json.loads(sp.read_text())
        except ValueError:
            warnings.append(f"{sp}: not valid JSON; ignored")
    return analyse(runs, study, warnings)


# ---- comparisons ---------------------------------------------------------------------------
@dataclass
class Comparison:
    context: str
    method: str
    baseline: str
    mean: float
    mean_base: float
    n: int
    n_base: int
    p: float
    verdict: str
    optimizer: str = ""


def _welch(a: list[float], b: list[float]) -> float:
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if np.std(a) == 0 and np.std(b) == 0:
        return 0.0 if np.mean(a) != np.mean(b) else 1.0
    from scipy import stats

    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def grapes_comparisons(an: Analysis, alpha: float = 0.05) -> list[Comparison]:
    """Each GRAPES group against the same method with GRAPES off (and the lr-matched SGD)."""
    if "grapes" not in an.method_fields:
        return []
    gi = an.method_fields.index("grapes")
    li = an.method_fields.index("lr_matched") if "lr_matched" in an.method_fields else None
    index = {(g.context, g.method): g for g in an.groups}
    out = []
    for g in an.groups:
        if g.method[gi] == "off":
            continue
        bases = []
        m = list(g.method)
        m[gi] = "off"
        if (g.context, tuple(m)) in index:
            bases.append(index[(g.context, tuple(m))])
        if li is not None:
            for other in an.groups:  # the lr-matched control may use its own lr
                if other.context == g.context and other.method[gi] == "off" \
                        and other.method[li] == "true" and other not in bases:
                    bases.append(other)
        for b in bases:
            a_vals, b_vals = g.values_of("best_test_acc"), b.values_of("best_test_acc")
            if not a_vals or not b_vals:
                continue
            ma, mb = float(np.mean(a_vals)), float(np.mean(b_vals))
            p = _welch(a_vals, b_vals)
            diff = 100 * (ma - mb)
            bl = an.method_label(b)
            if ma > mb and math.isfinite(p) and p < alpha:
                verdict = f"beats {bl} (+{diff:.2f} pp, Welch p={p:.3g})"
            elif ma > mb and math.isfinite(p):
                verdict = (f"does not significantly beat {bl} (+{diff:.2f} pp, Welch p={p:.3g}, "
                           f"n={len(a_vals)} vs {len(b_vals)})")
            elif ma > mb:
                verdict = (f"has a higher mean than {bl} (+{diff:.2f} pp) but with n="
                           f"{len(a_vals)} vs {len(b_vals)} no significance test is possible")
            else:
                verdict = (f"does not beat {bl} ({diff:+.2f} pp"
                           + (f", Welch p={p:.3g})" if math.isfinite(p) else ")"))
            opt = str((g.runs[0].get("config") or {}).get("optimizer", ""))
            base_opt = str((b.runs[0].get("config") or {}).get("optimizer", ""))
            if base_opt != opt:
                continue
            out.append(Comparison(an.context_label(g), an.method_label(g), bl, ma, mb,
                                  len(a_vals), len(b_vals), p, verdict, opt))
    return out


# ---- plots ---------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _contexts(an: Analysis) -> list[tuple]:
    out: list[tuple] = []
    for g in an.groups:
        if g.context not in out:
            out.append(g.context)
    return out


def _methods(an: Analysis) -> list[tuple]:
    out: list[tuple] = []
    for g in an.groups:
        if g.method not in out:
            out.append(g.method)
    return out


def _colors(n: int):
    plt = _plt()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def bar_plot(an: Analysis, metric: str, path: Path, ylabel: str, log: bool = False,
             title: str = "") -> None:
    """Grouped bars: contexts along x, one bar per method, error bar = std over seeds."""
    plt = _plt()
    ctxs, meths = _contexts(an), _methods(an)
    index = {(g.context, g.method): g for g in an.groups}
    width = 0.8 / max(len(meths), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(ctxs) * max(1, len(meths)) * 0.45 + 3),
                                    4.2))
    colors = _colors(len(meths))
    for j, m in enumerate(meths):
        xs, ys, es = [], [], []
        for i, c in enumerate(ctxs):
            g = index.get((c, m))
            if g is None:
                continue
            mu, sd, n = g.stat(metric)
            if n == 0:
                continue
            xs.append(i + (j - (len(meths) - 1) / 2) * width)
            ys.append(mu)
            es.append(sd if math.isfinite(sd) else 0.0)
        label = method_label(dict(zip(an.method_fields, m, strict=False)))
        ax.bar(xs, ys, width, yerr=es, capsize=2, label=label, color=colors[j])
    ax.set_xticks(range(len(ctxs)))
    ax.set_xticklabels([" ".join(c) or "all" for c in ctxs], rotation=45 if len(ctxs) > 4 else 0,
                       ha="right" if len(ctxs) > 4 else "center", fontsize=8)
    ax.set_ylabel(ylabel)
    if log and any(g.stat(metric)[0] > 0 for g in an.groups):
        ax.set_yscale("log")
    if title:
        ax.set_title(title, fontsize=10)
    if len(meths) > 1:
        ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _grid(n: int):
    cols = min(4, max(1, n))
    rows = math.ceil(n / cols)
    return rows, cols


def learning_curves(an: Analysis, path: Path) -> list[list[Any]]:
    """Mean test accuracy per epoch per group (one panel per context); returns CSV rows."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    ctxs, meths = _contexts(an), _methods(an)
    colors = dict(zip(meths, _colors(len(meths)), strict=False))
    rows_csv: list[list[Any]] = []
    r, c = _grid(len(ctxs))
    fig, axes = plt.subplots(r, c, figsize=(4 * c, 3.2 * r), squeeze=False)
    for i, ctx in enumerate(ctxs):
        ax = axes[i // c][i % c]
        for g in an.groups:
            if g.context != ctx:
                continue
            per_epoch: dict[int, list[float]] = defaultdict(list)
            for run in g.finished():
                for e in run.get("epochs") or []:
                    v = _fnum(e.get("test_acc"))
                    if math.isfinite(v):
                        per_epoch[int(e["epoch"])].append(v)
            if not per_epoch:
                continue
            ep = sorted(per_epoch)
            stats = [mean_std(per_epoch[k]) for k in ep]
            mu = np.array([s[0] for s in stats])
            sd = np.array([s[1] if math.isfinite(s[1]) else 0.0 for s in stats])
            ax.plot(ep, mu, marker="." if len(ep) < 30 else None, color=colors[g.method],
                    label=an.method_label(g))
            ax.fill_between(ep, mu - sd, mu + sd, color=colors[g.method], alpha=0.15)
            for k, s in zip(ep, stats, strict=False):
                rows_csv.append([*g.values.values(), k, s[0], s[1], s[2]])
        ax.set_title(" ".join(ctx) or "all runs", fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        if i == 0 and len(meths) > 1:
            ax.legend(fontsize=7)
    for j in range(len(ctxs), r * c):
        axes[j // c][j % c].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return rows_csv


def _series_label(an: Analysis, g: Group, drop: tuple[str, ...]) -> str:
    pairs = zip(an.context_fields, g.context, strict=True)
    extra = [f"{k}={v}" for k, v in pairs if k not in drop]
    return ", ".join([an.method_label(g), *extra])


def acc_vs_bits(an: Analysis, path: Path) -> list[list[Any]] | None:
    """Best test accuracy vs weight bits, a line per method (and rounding etc.)."""
    fixed_runs = [r for r in an.runs if device_bits(r) is not None and r.get("status") in FINISHED]
    if not fixed_runs:
        return None
    # Device parameters other than bits that vary (e.g. rounding) split the lines.
    params_of = {id(r): {k: _disp(v) for k, v in
                         ((r.get("device_model") or {}).get("params") or {}).items()
                         if k != "bits"} for r in fixed_runs}
    keys = sorted({k for p in params_of.values() for k in p})
    split = [k for k in keys if len({p.get(k) for p in params_of.values()}) > 1]
    noise_varies = len({device_noise(r) for r in fixed_runs}) > 1
    # Colour = method (and other context), line style = rounding etc.
    series: dict[tuple[str, str], dict[float, list[float]]] = defaultdict(
        lambda: defaultdict(list))
    group_of = {id(r): g for g in an.groups for r in g.runs}
    for r in fixed_runs:
        g = group_of[id(r)]
        lab = _series_label(an, g, ("backend",))
        extra = [f"{k}={params_of[id(r)].get(k)}" for k in split]
        if noise_varies:
            rs, ws = device_noise(r)
            extra.append(f"read σ={rs:g}, write σ={ws:g}")
        series[(lab, ", ".join(extra))][device_bits(r)].append(_fnum(r.get("best_test_acc")))
    floats: dict[str, list[float]] = defaultdict(list)
    for r in an.runs:
        if _is_float_device(r) and r.get("status") in FINISHED and device_noise(r) == (0.0, 0.0):
            floats[_series_label(an, group_of[id(r)], ("backend",))].append(
                _fnum(r.get("best_test_acc")))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    bases = sorted({b for b, _ in series} | set(floats), key=_natural)
    colors = dict(zip(bases, _colors(len(bases)), strict=False))
    variants = sorted({v for _, v in series}, key=_natural)
    styles = dict(zip(variants, ["-", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1))] * 8, strict=False))
    markers = dict(zip(variants, ["o", "s", "^", "v", "D"] * 8, strict=False))
    rows = []
    all_bits: set[float] = set()
    for key in sorted(series, key=lambda k: (_natural(k[0]), _natural(k[1]))):
        base, var = key
        name = ", ".join(p for p in key if p)
        pts = series[key]
        bits = sorted(pts)
        all_bits.update(bits)
        stats = [mean_std(pts[b]) for b in bits]
        ax.errorbar(bits, [s[0] for s in stats],
                    yerr=[s[1] if math.isfinite(s[1]) else 0 for s in stats],
                    marker=markers[var], ls=styles[var], capsize=3, label=name,
                    color=colors[base])
        rows += [[name, b, *s] for b, s in zip(bits, stats, strict=False)]
    for name, vals in floats.items():
        mu, sd, n = mean_std(vals)
        if n:
            ax.axhline(mu, ls="--", lw=1, color=colors[name], alpha=0.8,
                       label=f"{name}, float32 reference")
            rows.append([f"{name}, float32", 32, mu, sd, n])
    ax.set_xticks(sorted(all_bits))
    ax.set_xlabel("weight bits (fixed point)")
    ax.set_ylabel("best test accuracy")
    ax.set_title("Accuracy vs weight precision (mean ± std over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return rows


def acc_vs_noise(an: Analysis, path: Path) -> list[list[Any]] | None:
    """Best test accuracy vs read and write noise sigma, a line per method and device."""
    fin = [r for r in an.runs if r.get("status") in FINISHED]
    if not any(device_noise(r) != (0.0, 0.0) for r in fin):
        return None
    group_of = {id(r): g for g in an.groups for r in g.runs}

    def device_base(r: dict) -> str:
        b = device_bits(r)
        kind = (r.get("device_model") or {}).get("backend", "?")
        return f"{kind}{int(b)}" if b is not None else kind

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), squeeze=False)
    rows = []
    for ax, which, other in ((axes[0][0], 0, 1), (axes[0][1], 1, 0)):
        series: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in fin:
            sig = device_noise(r)
            if sig[other] != 0.0:
                continue
            name = f"{_series_label(an, group_of[id(r)], ('backend',))}, {device_base(r)}"
            series[name][sig[which]].append(_fnum(r.get("best_test_acc")))
        names = sorted(series, key=_natural)
        colors = dict(zip(names, _colors(len(names)), strict=False))
        for name in names:
            xs = sorted(series[name])
            if len(xs) < 2:
                continue
            stats = [mean_std(series[name][x]) for x in xs]
            ax.errorbar([100 * x for x in xs], [s[0] for s in stats],
                        yerr=[s[1] if math.isfinite(s[1]) else 0 for s in stats], marker="o",
                        capsize=3, label=name, color=colors[name])
            rows += [["read" if which == 0 else "write", name, x, *s]
                     for x, s in zip(xs, stats, strict=False)]
        ax.set_xlabel("read noise σ (% of the weight range)" if which == 0
                      else "write noise σ (% of each update)")
        ax.set_ylabel("best test accuracy")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return rows


def drift_plot(an: Analysis, path: Path) -> list[list[Any]] | None:
    """Test accuracy vs time after programming, a line per group and compensation setting."""
    if not any(isinstance(r.get("drift"), list) and r["drift"] for r in an.runs):
        return None
    plt = _plt()
    ctxs = [c for c in _contexts(an) if any(
        g.context == c and any(r.get("drift") for r in g.runs) for g in an.groups)]
    r_, c_ = _grid(len(ctxs))
    fig, axes = plt.subplots(r_, c_, figsize=(5.5 * c_, 4.2 * r_), squeeze=False)
    meths = _methods(an)
    colors = dict(zip(meths, _colors(len(meths)), strict=True))
    rows = []
    for i, ctx in enumerate(ctxs):
        ax = axes[i // c_][i % c_]
        for g in an.groups:
            if g.context != ctx:
                continue
            pts: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
            for run in g.finished():
                for d in run.get("drift") or []:
                    comp = d.get("compensation")
                    t = _fnum(d.get("t_seconds"))
                    if math.isfinite(t):
                        pts[(comp,)][t].append(_fnum(d.get("test_acc")))
            for (comp,), by_t in pts.items():
                ts = sorted(by_t)
                stats = [mean_std(by_t[t]) for t in ts]
                lab = an.method_label(g) + ("" if comp is None else
                                            f", compensation {'on' if comp else 'off'}")
                ax.plot(ts, [s[0] for s in stats], marker="o" if comp else "s",
                        ls="-" if comp or comp is None else "--", color=colors[g.method],
                        label=lab)
                rows += [[*g.values.values(), _disp(comp), t, *s]
                         for t, s in zip(ts, stats, strict=True)]
        ax.set_xscale("log")
        ax.set_xlabel("time after programming (s)")
        ax.set_ylabel("test accuracy")
        ax.set_title(" ".join(ctx) or "all runs", fontsize=9)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    for j in range(len(ctxs), r_ * c_):
        axes[j // c_][j % c_].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return rows


# ---- the report ----------------------------------------------------------------------------
SUMMARY_METRICS = ("best_test_acc", "final_test_acc", "slowness", "pulses_total",
                   "optimizer_state_bytes", "seconds_total")


def summary_rows(an: Analysis) -> tuple[list[str], list[list[Any]]]:
    header = [*an.group_fields, "n_runs", "n_ok", "n_diverged", "n_error"]
    for m in SUMMARY_METRICS:
        header += [f"{m}_mean", f"{m}_std", f"{m}_n"]
    rows = []
    for g in an.groups:
        row: list[Any] = [*g.values.values(), len(g.runs), g.count("ok"), g.count("diverged"),
                          g.count("error")]
        for m in SUMMARY_METRICS:
            row += list(g.stat(m))
        rows.append(row)
    return header, rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def write_report(dir_: str | Path) -> Path:
    """Write report.md, the CSV tables and the PNG plots into ``dir_``; return report.md."""
    d = Path(dir_)
    an = load(d)
    files: list[str] = []

    header, rows = summary_rows(an)
    write_csv(d / "summary.csv", header, rows)
    files.append("summary.csv")

    bar_plot(an, "best_test_acc", d / "best_test_acc.png", "best test accuracy",
             title="Best test accuracy (mean ± std over seeds)")
    bar_plot(an, "slowness", d / "slowness.png", "slowness (epochs to half plateau)",
             title="Slowness of the plateau fit (lower is faster)")
    bar_plot(an, "pulses_total", d / "pulses.png", "weight-update pulses (total)", log=True,
             title="Write pulses per run")
    bar_plot(an, "optimizer_state_bytes", d / "optimizer_memory.png",
             "optimizer state (bytes)", title="Optimizer memory")
    lc_rows = learning_curves(an, d / "learning_curves.png")
    write_csv(d / "learning_curves.csv", [*an.group_fields, "epoch", "test_acc_mean",
                                          "test_acc_std", "n"], lc_rows)
    files += ["best_test_acc.png", "slowness.png", "learning_curves.png", "learning_curves.csv",
              "pulses.png", "optimizer_memory.png"]
    extra_plots = []
    bits_rows = acc_vs_bits(an, d / "acc_vs_bits.png")
    if bits_rows is not None:
        write_csv(d / "acc_vs_bits.csv", ["series", "bits", "best_test_acc_mean",
                                          "best_test_acc_std", "n"], bits_rows)
        extra_plots.append(("Accuracy vs weight bits", "acc_vs_bits.png"))
        files += ["acc_vs_bits.png", "acc_vs_bits.csv"]
    noise_rows = acc_vs_noise(an, d / "acc_vs_noise.png")
    if noise_rows is not None:
        write_csv(d / "acc_vs_noise.csv", ["noise", "series", "sigma", "best_test_acc_mean",
                                           "best_test_acc_std", "n"], noise_rows)
        extra_plots.append(("Accuracy vs read / write noise", "acc_vs_noise.png"))
        files += ["acc_vs_noise.png", "acc_vs_noise.csv"]
    drift_rows = drift_plot(an, d / "drift.png")
    if drift_rows is not None:
        write_csv(d / "drift.csv", [*an.group_fields, "compensation", "t_seconds",
                                    "test_acc_mean", "test_acc_std", "n"], drift_rows)
        extra_plots.append(("Accuracy vs time after programming (drift)", "drift.png"))
        files += ["drift.png", "drift.csv"]
    comps = grapes_comparisons(an)
    write_csv(d / "comparisons.csv", ["context", "method", "baseline", "best_test_acc_mean",
                                      "baseline_mean", "n", "n_baseline", "welch_p", "verdict"],
              [[c.context, c.method, c.baseline, c.mean, c.mean_base, c.n, c.n_base, c.p,
                c.verdict] for c in comps])
    files.append("comparisons.csv")

    md = _markdown(an, comps, extra_plots, files)
    out = d / "report.md"
    tmp = d / "report.md.tmp"
    tmp.write_text(md)
    tmp.replace(out)
    return out


def _markdown(an: Analysis, comps: list[Comparison], extra_plots, files) -> str:
    st = an.study or {}
    name = st.get("name") or "sweep"
    lines = [f"# Report: {name}{' (quick variant)' if st.get('quick') else ''}", ""]
    if st.get("question"):
        lines += [f"**Question.** {st['question']}", ""]
    if st.get("description"):
        lines += [st["description"], ""]
    statuses = defaultdict(int)
    for r in an.runs:
        statuses[r.get("status", "?")] += 1
    counts = ", ".join(f"{n} {k}" for k, n in sorted(statuses.items()))
    lines.append(f"Runs with results: **{len(an.runs)}** ({counts}).")
    if st.get("runs") is not None:
        planned = {r["key"] for r in st["runs"]}
        have = {r["key"] for r in an.runs}
        missing = planned - have
        stale = have - planned
        lines.append(f"The study plans {len(planned)} runs; "
                     + (f"**{len(missing)} have no result yet** (the sweep is not finished; "
                        "numbers below are partial)." if missing else "all have a result.")
                     + (f" {len(stale)} results are from runs no longer in the study file; "
                        "they are included." if stale else ""))
    lines.append("")
    lines += ["Numbers are the paper's: the best test accuracy over the epochs of a run, "
              "then mean ± sample standard deviation (ddof=1) over seeds; *slowness* is the "
              "plateau-equation fit `acc(epoch) = max_acc * epoch / (slowness + epoch)`, epochs "
              "to half the plateau, lower is faster. Diverged runs count with the best accuracy "
              "they reached before diverging; runs that failed with an error are left out of "
              "all means.", ""]
    if an.fixed:
        lines += ["## Settings shared by all runs", "",
                  ", ".join(f"`{k}={v}`" for k, v in an.fixed.items()), ""]
    for w in an.warnings:
        lines.append(f"> warning: {w}")
    if an.warnings:
        lines.append("")

    # Summary table
    lines += ["## Results per group", ""]
    head = [*an.group_fields, "runs", "diverged", "errors", "best test acc", "slowness",
            "final test acc", "pulses", "optimizer state (B)"]
    rows = []
    for g in an.groups:
        ba, bs, _ = g.stat("best_test_acc")
        sl, ss, _ = g.stat("slowness")
        fa, fs, _ = g.stat("final_test_acc")
        pu, _, _ = g.stat("pulses_total")
        mem, _, _ = g.stat("optimizer_state_bytes")
        nd, ne = g.count("diverged"), g.count("error")
        rows.append([*g.values.values(), len(g.runs), f"**{nd}**" if nd else "0",
                     f"**{ne}**" if ne else "0", _fmt(ba, bs), _fmt(sl, ss, 2), _fmt(fa, fs),
                     f"{pu:.3g}" if math.isfinite(pu) else "–",
                     f"{mem:.0f}" if math.isfinite(mem) else "–"])
    lines += [_md_table(head, rows), "", "Table as CSV: `summary.csv`.", ""]

    # Best method per context
    if an.method_fields:
        lines += ["## Best method per setting", ""]
        ctxs = _contexts(an)
        for ctx in ctxs:
            gs = [g for g in an.groups if g.context == ctx and g.stat("best_test_acc")[2] > 0]
            if not gs:
                continue
            best = max(gs, key=lambda g: g.stat("best_test_acc")[0])
            mu, sd, n = best.stat("best_test_acc")
            pairs = zip(an.context_fields, ctx, strict=True)
            ctx_label = " ".join(f"{k}={v}" for k, v in pairs) or "All runs"
            runner = sorted(gs, key=lambda g: -g.stat("best_test_acc")[0])
            tail = ""
            if len(runner) > 1:
                m2, s2, n2 = runner[1].stat("best_test_acc")
                p = _welch(best.values_of("best_test_acc"), runner[1].values_of("best_test_acc"))
                tail = (f"; next: {an.method_label(runner[1])} {_fmt(m2, s2)}"
                        + (f" (Welch p={p:.3g}"
                           + (", not a significant difference)" if p >= 0.05 else ")")
                           if math.isfinite(p) else " (too few seeds for a test)"))
            lines.append(f"- {ctx_label}: best is **{an.method_label(best)}** with "
                         f"{_fmt(mu, sd)} (n={n}){tail}.")
        lines.append("")

    # GRAPES vs baselines
    if comps:
        wins = sum(c.verdict.startswith("beats") for c in comps)
        higher = sum(not c.verdict.startswith("beats") and c.mean > c.mean_base for c in comps)
        lines += ["## Does GRAPES beat its baseline?", "",
                  f"Of {len(comps)} comparisons of a GRAPES variant with the same optimizer "
                  f"without GRAPES, GRAPES is significantly better (Welch t-test over seeds, "
                  f"p < 0.05) in **{wins}**, better on average but not significantly (or with "
                  f"too few seeds to test) in {higher}, and **not better in "
                  f"{len(comps) - wins - higher}**.", ""]
        for c in comps:
            lines.append(f"- {c.context}: {c.method} ({c.mean:.4f}, n={c.n}) {c.verdict}.")
        losers = [c for c in comps if not c.verdict.startswith("beats") and c.optimizer == "sgd"]
        if losers:
            lines += ["", "GRAPES does not beat SGD (no significant gain) in: "
                      + "; ".join(sorted({c.context for c in losers})) + "."]
        lines += ["", "Table as CSV: `comparisons.csv`.", ""]
    elif "grapes" in an.fixed:
        lines += [f"(GRAPES is `{an.fixed['grapes']}` in every run: no GRAPES comparison.)", ""]

    # Flagged runs
    flagged = [r for r in an.runs if r.get("status") not in ("ok",)]
    lines += ["## Flagged runs (diverged, error, other)", ""]
    if not flagged:
        lines += ["None: every run finished without diverging.", ""]
    else:
        for r in sorted(flagged, key=lambda r: (r.get("status", ""), r.get("key", ""))):
            f = _run_fields(r)
            lab = " ".join(f"{k}={f.get(k)}" for k in an.group_fields) or "-"
            seed = (r.get("config") or {}).get("seed")
            why = ""
            if r.get("status") == "diverged":
                why = f"diverged in epoch {r.get('diverged_epoch')}"
            elif r.get("status") == "error":
                last = (r.get("error") or "").strip().splitlines()[-1:] or ["?"]
                why = f"error: `{last[0][:200]}`"
            lines.append(f"- `{r.get('key')}` {lab} seed={seed}: **{r.get('status')}** {why}")
        lines.append("")

    # Plots
    lines += ["## Plots", "",
              "![best test accuracy](best_test_acc.png)", "",
              "![slowness](slowness.png)", "",
              "Learning curves (mean test accuracy per epoch, band = ± std over seeds; data in "
              "`learning_curves.csv`):", "", "![learning curves](learning_curves.png)", ""]
    for title, png in extra_plots:
        lines += [f"{title} (data in `{png[:-4]}.csv`):", "", f"![{title}]({png})", ""]
    lines += ["Weight-update pulses and optimizer memory per method:", "",
              "![pulses](pulses.png)", "", "![optimizer memory](optimizer_memory.png)", ""]
    lines += ["Files: " + ", ".join(f"`{f}`" for f in files) + ".", ""]
    return "\n".join(lines)


# ---- CLI -----------------------------------------------------------------------------------
def add_cli(sub) -> None:
    p = sub.add_parser("report", help="write report.md, CSV tables and plots of a sweep folder")
    p.add_argument("dir", help="sweep results folder (holding runs.jsonl)")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    out = write_report(args.dir)
    print(f"wrote {out}")
    return 0
