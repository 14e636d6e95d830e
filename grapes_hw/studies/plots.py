"""The plots of ``grapes-hw report`` (PNG, matplotlib's Agg backend).

Every figure of a report draws a learning rule (method) with the same colour and marker
(``Style``), in the same order; legends sit outside the axes; error bars (± sample std over
seeds) appear only where a point has n > 1 runs, and n is given in the title (or next to a
point whose n differs); devices follow ``analysis``' order (float first, bits
descending, noise ascending); panels that are compared share their y range; a zero on a log
axis is drawn at the bottom edge, hollow and labelled 0; titles give the dataset, network,
epochs and seeds that ran. A plot without data is not written: each function returns
whether it wrote its file.

Over 400 lines: one function per figure, all sharing ``Style`` and the panel helpers.
"""

from __future__ import annotations

import math
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

from grapes_hw.studies.analysis import (
    FINISHED,
    Analysis,
    Facts,
    device_bits,
    device_noise,
    device_sort_key,
    disp,
    is_float_device,
    mean_std,
    natural,
    other_noise,
    should_write,
)

COLORS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000",
          "#999999")
"""Okabe-Ito colours (distinguishable with colour blindness), one per rule."""
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", ":", "-.")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class Style:
    """Colour and marker of each method of an analysis (the same in every figure)."""

    def __init__(self, an: Analysis):
        self.an = an
        self.methods = an.methods()
        self.index = {m: i for i, m in enumerate(self.methods)}

    def color(self, method: tuple) -> str:
        return COLORS[self.index[method] % len(COLORS)]

    def marker(self, method: tuple) -> str:
        i = self.index[method]
        return MARKERS[(i + i // len(COLORS)) % len(MARKERS)]

    def label(self, method: tuple) -> str:
        return self.an.label_of(method) if self.an.method_fields else "all runs"

    def kw(self, method: tuple, hollow: bool = False) -> dict:
        c = self.color(method)
        return {"color": c, "marker": self.marker(method), "markeredgecolor": c,
                "markerfacecolor": "white" if hollow else c}


def _title(fig, what: str, facts: Facts, n_note: str = "") -> int:
    """The figure's title, every line wrapped to the figure's width (a long line, e.g. a CNN's
    conv stack or a note on n, would run off a narrow figure into the axes); returns its
    number of lines."""
    chars = max(40, int(fig.get_figwidth() * 13))  # ~13 characters per inch at 10 pt
    lines = f"{what}{n_note}\n{facts.title_lines()}".split("\n")
    text = "\n".join(textwrap.fill(line, chars) for line in lines)
    fig.suptitle(text, fontsize=10)
    return text.count("\n") + 1


def _n_note(ns: list[int]) -> str:
    ns = [n for n in ns if n > 0]
    if not ns:
        return ""
    lo, hi = min(ns), max(ns)
    if hi == 1:
        return " (n = 1 run per point: no error bars)"
    bars = "mean ± std over seeds"
    return f" ({bars}, n = {lo} per point)" if lo == hi else \
        f" ({bars}, n = {lo}-{hi}, marked where not {hi}; no bar where n = 1)"


def _save(fig, path: Path, legend_axes=None) -> None:
    plt = _plt()
    if legend_axes is not None:
        handles, labels = legend_axes
        if handles and labels != ["all runs"]:  # one kind of run: nothing to tell apart
            # at the top of the panels, right of them: below the title, which a narrow
            # figure's legend would otherwise overlap
            top = max((ax.get_position().y1 for ax in fig.axes), default=0.93)
            fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, top),
                       fontsize=8, frameon=False)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _handles(axes) -> tuple[list, list]:
    seen: dict[str, Any] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(lab, h)
    return list(seen.values()), list(seen)


def compact(value: str) -> str:
    """A plot label's value made short: equal hidden widths ``128-128-128-128`` -> ``4x128``
    (two or more layers); anything else unchanged."""
    parts = value.split("-")
    if len(parts) >= 2 and parts[0].isdigit() and len(set(parts)) == 1:
        return f"{len(parts)}x{parts[0]}"
    return value


_BARE_FIELDS = ("backend", "model")
"""Context fields whose value names itself on an axis (``fixed8``, ``snu``); any other field
is written ``name=value`` where a context has several fields (``train_subset=10000``), and
left out where it is unset (``none``)."""


def context_text(an: Analysis, ctx: tuple) -> str:
    """An x tick label: the context's values, the backend (or model) first."""
    if not ctx:
        return "all runs"
    pairs = list(zip(an.context_fields, ctx, strict=True))
    if len(pairs) == 1:
        return compact(ctx[0])
    pairs.sort(key=lambda kv: kv[0] not in _BARE_FIELDS)
    return ", ".join(compact(v) if k in _BARE_FIELDS else f"{k}={compact(v)}" for k, v in pairs
                     if k in _BARE_FIELDS or v != "none") or "all runs"


def _ctx_axis_label(an: Analysis) -> str:
    return ", ".join(sorted(an.context_fields, key=lambda k: k not in _BARE_FIELDS))


def _panel_title(an: Analysis, ctx: tuple) -> str:
    """A panel's context, every field named (``backend=float32``); with several fields the
    backend first and unset ones (``none``) left out, as on the x axes."""
    pairs = list(zip(an.context_fields, ctx, strict=True))
    if len(pairs) > 1:
        pairs = sorted(((k, v) for k, v in pairs if k in _BARE_FIELDS or v != "none"),
                       key=lambda kv: kv[0] not in _BARE_FIELDS)
    return ", ".join(f"{k}={compact(v)}" for k, v in pairs) or "all runs"


def _errorbar(ax, xs, stats, **kw) -> None:
    """Points with ± std bars only where n > 1."""
    ys = [s[0] for s in stats]
    err = [s[1] if s[2] > 1 and math.isfinite(s[1]) else math.nan for s in stats]
    if all(math.isnan(e) for e in err):
        ax.plot(xs, ys, **kw)
    else:
        ax.errorbar(xs, ys, yerr=err, capsize=3, **kw)


# ---- one metric per context and method -----------------------------------------------------
def _dots(ax, an: Analysis, style: Style, metric: str, ctxs: list[tuple], log: bool) -> list:
    """Draw metric means per context (x) and method (offset points); returns the n's."""
    index = {(g.context, g.method): g for g in an.groups}
    meths = style.methods
    width = 0.8 / max(len(meths), 1)
    pts = []
    for j, m in enumerate(meths):
        for i, c in enumerate(ctxs):
            g = index.get((c, m))
            if g is not None and g.stat(metric)[2]:
                pts.append((m, i + (j - (len(meths) - 1) / 2) * width, g.stat(metric)))
    ns = [s[2] for _, _, s in pts]
    modal = max(ns, default=0)  # the n of the title; other n are marked
    positive = [s[0] for _, _, s in pts if s[0] > 0]
    log = log and bool(positive)
    floor = min(positive) / 4 if log else 0.0
    for m in meths:
        mine = [(x, s) for mm, x, s in pts if mm == m]
        if not mine:
            continue
        pos = [(x, s) for x, s in mine if not log or s[0] > 0]
        if pos:
            _errorbar(ax, [x for x, _ in pos], [s for _, s in pos], ls="none", ms=6,
                      label=style.label(m), **style.kw(m))
        zeros = [x for x, s in mine if log and s[0] <= 0]
        if zeros:
            ax.plot(zeros, [floor] * len(zeros), ls="none", ms=7, **style.kw(m, hollow=True),
                    label=style.label(m) if not pos else None)
            for x in zeros:
                ax.annotate("0", (x, floor), textcoords="offset points", xytext=(0, 6),
                            ha="center", fontsize=7, color=style.color(m))
        for x, s in mine:
            if s[2] != modal:
                y = s[0] if not log or s[0] > 0 else floor
                ax.annotate(f"n={s[2]}", (x, y), textcoords="offset points", xytext=(0, -11),
                            ha="center", fontsize=6)
    if log:
        ax.set_yscale("log")
        if any(s[0] <= 0 for _, _, s in pts):
            ax.set_ylim(bottom=floor / 2)
    ax.set_xticks(range(len(ctxs)))
    many = len(ctxs) > 4
    ax.set_xticklabels([context_text(an, c) for c in ctxs], rotation=45 if many else 0,
                       ha="right" if many else "center", fontsize=8)
    ax.set_xlim(-0.6, len(ctxs) - 0.4)
    ax.margins(y=0.12)  # no point on the frame
    if an.context_fields:
        ax.set_xlabel(_ctx_axis_label(an), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return ns


def _width(n_ctx: int, n_meth: int) -> float:
    return max(5.0, 0.33 * n_ctx * max(1, n_meth) ** 0.5 + 2.5)


def metric_plot(an: Analysis, facts: Facts, metric: str, path: Path, ylabel: str, what: str,
                *, log: bool = False, contexts: list[tuple] | None = None,
                chance: float | None = None) -> bool:
    """One point per context and method (mean ± std), a dotted line at ``chance`` if given;
    False (nothing written) without data."""
    style = Style(an)
    ctxs = [c for c in (contexts if contexts is not None else an.contexts())
            if any(g.context == c and g.stat(metric)[2] for g in an.groups)]
    if not ctxs:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(_width(len(ctxs), len(style.methods)), 4.0))
    ns = _dots(ax, an, style, metric, ctxs, log)
    low = min((g.stat(metric)[0] for g in an.groups if g.stat(metric)[2]), default=math.inf)
    if chance is not None and low < 2 * chance:  # only where some point comes near it
        ax.axhline(chance, color="0.4", ls=":", lw=1, label=f"chance (1/{round(1 / chance)})")
    ax.set_ylabel(ylabel)
    title_lines = _title(fig, what, facts, _n_note(ns))
    # room for the axes besides the title's lines and the (rotated) x labels
    longest = max(len(context_text(an, c)) for c in ctxs)
    fig.set_figheight(3.0 + 0.18 * title_lines + (0.055 * longest if len(ctxs) > 4 else 0.3))
    fig.tight_layout()
    _save(fig, path, _handles([ax]))
    return True


def pulses_plot(an: Analysis, facts: Facts, path: Path) -> bool:
    """Write pulses of the devices that are programmed by writes (fixed point, pulsed analog
    tiles; not float, not analog inference tiles), one panel per unit (log axis, 0 visible)."""
    units: dict[str, list[tuple]] = {}
    for g in an.groups:
        fin = [r for r in g.finished() if should_write(r)]
        if fin and g.context not in units.get(fin[0]["pulses_unit"], []):
            units.setdefault(fin[0]["pulses_unit"], []).append(g.context)
    if not units:
        return False
    style = Style(an)
    plt = _plt()
    width = _width(max(len(c) for c in units.values()), len(style.methods))
    fig, axes = plt.subplots(len(units), 1, figsize=(width, 3.8 * len(units)), squeeze=False)
    ns: list[int] = []
    for ax, (unit, ctxs) in zip(axes[:, 0], units.items(), strict=True):
        ns += _dots(ax, an, style, "pulses_total", ctxs, log=True)
        ax.set_ylabel(f"pulses per run ({unit})", fontsize=8)
    _title(fig, "Weight writes per run (devices programmed by writes only)", facts,
           _n_note(ns))
    fig.tight_layout()
    _save(fig, path, _handles(axes[:, 0]))
    return True


def memory_plot(an: Analysis, facts: Facts, path: Path) -> bool:
    """Optimizer state per method (one point per method where no context changes it); not
    written when every rule keeps none (0 bytes: nothing to compare)."""
    style = Style(an)
    per_method: dict[tuple, set] = defaultdict(set)
    for g in an.groups:
        mu = g.stat("optimizer_state_bytes")[0]
        if math.isfinite(mu):
            per_method[g.method].add(mu)
    if not any(v > 0 for vals in per_method.values() for v in vals):
        return False
    if any(len(v) > 1 for v in per_method.values()):
        return metric_plot(an, facts, "optimizer_state_bytes", path, "optimizer state (bytes)",
                           "Optimizer memory")
    plt = _plt()
    from matplotlib.ticker import FuncFormatter

    meths = [m for m in style.methods if m in per_method]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(meths) + 2), 3.6))
    for i, m in enumerate(meths):
        v = next(iter(per_method[m]))
        ax.plot([i], [v], ls="none", ms=8, label=style.label(m), **style.kw(m))
        ax.annotate(f"{v:,.0f} B", (i, v), textcoords="offset points", xytext=(0, 8),
                    ha="center", fontsize=8)
    top = max(max(v) for v in per_method.values())
    ax.set_ylim(-0.05 * max(top, 1), 1.2 * max(top, 1))
    ax.set_xticks(range(len(meths)))
    ax.set_xticklabels([style.label(m) for m in meths], rotation=20, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(meths) - 0.4)
    ax.set_ylabel("optimizer state (bytes)")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.grid(axis="y", alpha=0.3)
    what = "Optimizer memory" + (" (the same in every setting of this study)"
                                 if an.context_fields else "")
    _title(fig, what, facts)
    fig.tight_layout()
    _save(fig, path)  # the x axis names the rules
    return True


# ---- curves --------------------------------------------------------------------------------
def _grid(n: int) -> tuple[int, int]:
    cols = min(4, max(1, n))
    return math.ceil(n / cols), cols


def _panels(n: int, w: float = 3.6, h: float = 2.9, sharex: bool = True):
    plt = _plt()
    r, c = _grid(n)
    fig, axes = plt.subplots(r, c, figsize=(w * c, h * r + 0.6), squeeze=False, sharey=True,
                             sharex=sharex)
    flat = [axes[i // c][i % c] for i in range(r * c)]
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def _axis_labels(axes: list, xlabel: str, ylabel: str, sharex: bool = True) -> None:
    """y label on the first column only (the y range is shared); x label under each column's
    last panel (or every panel when x is not shared)."""
    cols = _grid(len(axes))[1]
    for i, ax in enumerate(axes):
        if i % cols == 0:
            ax.set_ylabel(ylabel, fontsize=8)
        if not sharex or i + cols >= len(axes):
            ax.set_xlabel(xlabel, fontsize=8)
            ax.tick_params(labelbottom=True)


def learning_curves(an: Analysis, facts: Facts, path: Path) -> list[list[Any]]:
    """Mean test accuracy per epoch, one panel per context (shared y); returns CSV rows."""
    from matplotlib.ticker import MaxNLocator

    style = Style(an)
    ctxs = an.contexts()
    fig, axes = _panels(len(ctxs))
    rows: list[list[Any]] = []
    ns: list[int] = []
    for ax, ctx in zip(axes, ctxs, strict=True):
        for g in (g for g in an.groups if g.context == ctx):
            per_epoch: dict[int, list[float]] = defaultdict(list)
            for run in g.finished():
                for e in run.get("epochs") or []:
                    if e.get("test_acc") is not None and math.isfinite(e["test_acc"]):
                        per_epoch[int(e["epoch"])].append(e["test_acc"])
            if not per_epoch:
                continue
            ep = sorted(per_epoch)
            stats = [mean_std(per_epoch[k]) for k in ep]
            ns += [s[2] for s in stats]
            mu = [s[0] for s in stats]
            ax.plot(ep, mu, ms=4, lw=1.4, markevery=max(1, len(ep) // 12),
                    label=style.label(g.method), **style.kw(g.method))
            band = [(k, s) for k, s in zip(ep, stats, strict=True) if s[2] > 1]
            if band:
                ax.fill_between([k for k, _ in band], [s[0] - s[1] for _, s in band],
                                [s[0] + s[1] for _, s in band], color=style.color(g.method),
                                alpha=0.15, lw=0)
            rows += [[*g.values.values(), k, *s] for k, s in zip(ep, stats, strict=True)]
        if an.context_fields:
            ax.set_title(_panel_title(an, ctx), fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    _axis_labels(axes, "epoch", "test accuracy")
    note = _n_note(ns).replace("error bars", "band").replace("mean ± std", "mean, band ± std")
    _title(fig, "Test accuracy per epoch", facts, note)
    fig.tight_layout()
    _save(fig, path, _handles(axes))
    return rows


MAX_FIT_PANELS = 4
"""The most contexts (panels) ``plateau_fits`` draws."""


def plateau_fits(an: Analysis, facts: Facts, path: Path) -> bool:
    """The test curves with their plateau fits drawn on them, one panel per context: per
    rule the mean test accuracy per epoch (points) and ``acc(e) = a e / (s + e)`` with the
    means of the runs' accepted fits (dashed; the legend gives a and s). Not written when no
    run has an accepted fit, nor for more than ``MAX_FIT_PANELS`` contexts (a legend per
    panel would hide the curves; ``slowness.png`` summarises such grids)."""
    from matplotlib.ticker import MaxNLocator

    from grapes_hw.training.metrics import plateau

    style = Style(an)
    ctxs = [c for c in an.contexts()
            if any(r.get("slowness") is not None for g in an.groups if g.context == c
                   for r in g.finished())]
    if not ctxs or len(ctxs) > MAX_FIT_PANELS:
        return False
    fig, axes = _panels(len(ctxs), w=4.6, h=3.3)
    ns: list[int] = []
    for ax, ctx in zip(axes, ctxs, strict=True):
        for g in (g for g in an.groups if g.context == ctx):
            runs = g.finished()
            per_epoch: dict[int, list[float]] = defaultdict(list)
            for run in runs:
                for e in run.get("epochs") or []:
                    if e.get("test_acc") is not None and math.isfinite(e["test_acc"]):
                        per_epoch[int(e["epoch"])].append(e["test_acc"])
            fits = [r["plateau_fit"] for r in runs if r.get("slowness") is not None]
            if not per_epoch or not fits:
                continue
            ep = sorted(per_epoch)
            kw = style.kw(g.method)
            ax.plot(ep, [mean_std(per_epoch[k])[0] for k in ep], ls="none", ms=2.5,
                    marker=kw.get("marker", "o"), color=kw.get("color"), alpha=0.45)
            a = sum(f["max_accuracy"] for f in fits) / len(fits)
            s = sum(f["slowness"] for f in fits) / len(fits)
            xs = [ep[0] + (ep[-1] - ep[0]) * i / 200 for i in range(201)]
            ax.plot(xs, [plateau(x, a, s) for x in xs], ls="--", lw=1.6, color=kw.get("color"),
                    label=f"{style.label(g.method)}: a = {a:.3f}, s = {s:.2f} "
                          f"(n = {len(fits)})")
            ns.append(len(fits))
        if an.context_fields:
            ax.set_title(_panel_title(an, ctx), fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    _axis_labels(axes, "epoch", "test accuracy")
    lo, hi = min(ns), max(ns)
    n = lo if lo == hi else f"{lo}-{hi}"
    _title(fig, "Test curves (points: mean over seeds) and plateau fits", facts,
           f"\n(dashed: acc = a e / (s + e), the mean of {n} accepted fits per rule)")
    fig.tight_layout()
    for ax in axes:  # after the layout: a legend under each panel (a, s differ per panel)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=7, frameon=False)
    _save(fig, path)
    return True


def _extra(an: Analysis, g, drop: tuple[str, ...] = ("backend",)) -> str:
    """The context of ``g`` besides ``drop`` (e.g. ``credit=fa``): a series' line style."""
    pairs = zip(an.context_fields, g.context, strict=True)
    return ", ".join(f"{k}={v}" for k, v in pairs if k not in drop)


def _same_in(an: Analysis, runs: list[dict]) -> tuple[str, ...]:
    """``backend`` and the context fields with one value over ``runs`` (the runs a plot
    draws): naming them in every legend entry would tell no series apart."""
    ctxs = {an.group_of(r).context for r in runs}
    return ("backend", *(k for i, k in enumerate(an.context_fields)
                         if len({c[i] for c in ctxs}) <= 1))


def _series(style: Style, method: tuple, extra: str) -> str:
    return ", ".join(p for p in (style.label(method), extra) if p)


def uniform_widths(value: str) -> tuple[int, int] | None:
    """(width, depth) of a ``layers`` value of equal hidden widths (``128-128-128``)."""
    parts = value.split("-")
    if parts and all(p.isdigit() for p in parts) and len(set(parts)) == 1:
        return int(parts[0]), len(parts)
    return None


DEPTH_METRICS = (("best_test_acc", "best test accuracy"),
                 ("slowness", "slowness (epochs to half plateau)"))
"""The rows of ``acc_vs_depth``: the paper's Fig. 4b-c measures (accepted fits only)."""


def acc_vs_depth(an: Analysis, facts: Facts, path: Path) -> list[list[Any]] | None:
    """Best test accuracy and slowness vs the number of hidden layers, a column per width,
    a line per rule (the paper's Fig. 4b-c); returns CSV rows ``[rule, width, depth, metric,
    mean, std, n]``. None (no file) unless ``layers`` is the only context field and some
    width has >= 2 depths of equal-width networks."""
    if an.context_fields != ["layers"]:
        return None
    shape = {g.context: uniform_widths(g.context[0]) for g in an.groups}
    if any(v is None for v in shape.values()):
        return None
    depths: dict[int, set[int]] = defaultdict(set)
    for w, dep in shape.values():
        depths[w].add(dep)
    widths = sorted(w for w, ds in depths.items() if len(ds) >= 2)
    if not widths:
        return None
    style = Style(an)
    plt = _plt()
    fig, axes = plt.subplots(len(DEPTH_METRICS), len(widths), squeeze=False, sharey="row",
                             figsize=(3.4 * len(widths) + 2.2, 2.9 * len(DEPTH_METRICS) + 0.9))
    rows: list[list[Any]] = []
    ns: list[int] = []
    for i, (metric, ylabel) in enumerate(DEPTH_METRICS):
        for j, w in enumerate(widths):
            ax = axes[i][j]
            for m in style.methods:
                pts = sorted((shape[g.context][1], g.stat(metric)) for g in an.groups
                             if g.method == m and shape[g.context][0] == w and g.stat(metric)[2])
                if not pts:
                    continue
                _errorbar(ax, [d for d, _ in pts], [st for _, st in pts], ms=5,
                          label=style.label(m), **style.kw(m))
                ns += [st[2] for _, st in pts]
                rows += [[style.label(m), w, d, metric, *st] for d, st in pts]
            ax.set_xticks(sorted(depths[w]))
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(f"width {w}", fontsize=9)
            if i == len(DEPTH_METRICS) - 1:
                ax.set_xlabel("hidden layers")
            if j == 0:
                ax.set_ylabel(ylabel, fontsize=8)
    _title(fig, "Best test accuracy and slowness vs depth", facts, _n_note(ns))
    fig.tight_layout()
    _save(fig, path, _handles([ax for row in axes for ax in row]))
    return rows


def acc_vs_bits(an: Analysis, facts: Facts, path: Path) -> list[list[Any]] | None:
    """Best test accuracy vs weight bits (float first, then bits descending), a panel per
    rounding (and other device parameter that varies), shared y; returns CSV rows."""
    fixed_runs = [r for r in an.runs if device_bits(r) is not None and r.get("status") in FINISHED]
    if not fixed_runs:
        return None
    style = Style(an)
    params_of = {id(r): {k: disp(v) for k, v in
                         ((r.get("device_model") or {}).get("params") or {}).items()
                         if k != "bits"} for r in fixed_runs}
    keys = sorted({k for p in params_of.values() for k in p})
    split = [k for k in keys if len({p.get(k) for p in params_of.values()}) > 1]
    noise_varies = len({device_noise(r) for r in fixed_runs}) > 1
    float_runs = [r for r in an.runs if is_float_device(r) and r.get("status") in FINISHED
                  and device_noise(r) == (0, 0) and not other_noise(r)]
    drop = _same_in(an, fixed_runs + float_runs)
    # (variant panel, method, series label) -> bits -> values
    series: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in fixed_runs:
        g = an.group_of(r)
        var = [f"{k}={params_of[id(r)].get(k)}" for k in split]
        if noise_varies:
            rs, ws = device_noise(r)
            var.append(f"read σ={rs:g}, write σ={ws:g}")
        series[(", ".join(var), g.method, _extra(an, g, drop))][device_bits(r)].append(
            r.get("best_test_acc"))
    floats: dict[tuple, list[float]] = defaultdict(list)
    for r in float_runs:
        g = an.group_of(r)
        floats[(g.method, _extra(an, g, drop))].append(r.get("best_test_acc"))
    # A panel needs >= 2 bit widths to show a trend; none such: no plot.
    bits_of: dict[str, set] = defaultdict(set)
    for (v, _, _), pts in series.items():
        bits_of[v].update(pts)
    variants = sorted((v for v, b in bits_of.items() if len(b) >= 2),
                      key=lambda v: ("nearest" in v, natural(v)))
    if not variants:
        return None
    series = {k: v for k, v in series.items() if k[0] in variants}
    bits_all = sorted({b for pts in series.values() for b in pts}, reverse=True)
    xpos = {b: i + (1 if floats else 0) for i, b in enumerate(bits_all)}
    fig, axes = _panels(len(variants), 4.6, 3.6, sharex=False)
    rows: list[list[Any]] = []
    ns: list[int] = []
    extras = sorted({k[2] for k in series} | {k[1] for k in floats}, key=natural)
    ls_of = {e: LINESTYLES[i % len(LINESTYLES)] for i, e in enumerate(extras)}
    for ax, var in zip(axes, variants, strict=True):
        for (v, m, extra), pts in sorted(series.items(), key=lambda kv: (
                style.index[kv[0][1]], natural(kv[0][2]))):
            if v != var:
                continue
            bits = sorted(pts, reverse=True)
            stats = [mean_std(pts[b]) for b in bits]
            ns += [s[2] for s in stats]
            lab = _series(style, m, extra)
            _errorbar(ax, [xpos[b] for b in bits], stats, ms=5, label=lab, ls=ls_of[extra],
                      **style.kw(m))
            name = ", ".join(p for p in (lab, v) if p)
            rows += [[name, b, *s] for b, s in zip(bits, stats, strict=True)]
        for (m, extra), vals in sorted(floats.items(), key=lambda kv: style.index[kv[0][0]]):
            s = mean_std(vals)
            if s[2]:
                _errorbar(ax, [0], [s], ms=6, ls="none", label=f"{_series(style, m, extra)}, "
                          "float reference", **style.kw(m, hollow=True))
        if var:
            ax.set_title(var, fontsize=8)
        ticks = ([0] if floats else []) + [xpos[b] for b in bits_all]
        ax.set_xticks(ticks)
        ax.set_xticklabels((["float"] if floats else []) + [f"{b:g}" for b in bits_all])
        ax.grid(alpha=0.3)
    _axis_labels(axes, "weight bits (fixed point); float reference hollow",
                 "best test accuracy", sharex=False)
    for (m, extra), vals in floats.items():
        s = mean_std(vals)
        if s[2]:
            rows.append([f"{_series(style, m, extra)}, float32", 32, *s])
            ns.append(s[2])
    _title(fig, "Best test accuracy vs weight precision", facts, _n_note(ns))
    fig.tight_layout()
    _save(fig, path, _handles(axes))
    return rows


def acc_vs_noise(an: Analysis, facts: Facts, path: Path) -> list[list[Any]] | None:
    """Best test accuracy vs read and vs write noise sigma (a panel each, shared y); a line
    per method and noise-free device. None (no file) unless some line has >= 2 sigmas."""
    fin = [r for r in an.runs if r.get("status") in FINISHED and not other_noise(r)]
    style = Style(an)

    def base(r: dict) -> str:
        b = device_bits(r)
        dm = r.get("device_model") or {}
        if b is not None:
            return f"{dm.get('backend', '?')}{int(b)}"
        return str((dm.get("params") or {}).get("dtype") or dm.get("backend", "?"))

    bases = list(dict.fromkeys(base(r) for r in sorted(fin, key=device_sort_key)))
    drop = _same_in(an, fin)
    panels = []
    for which, other, xlabel in ((0, 1, "read noise σ (% of the weight range)"),
                                 (1, 0, "write noise σ (% of each update)")):
        series: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in fin:
            sig = device_noise(r)
            if sig[other] == 0.0:
                g = an.group_of(r)
                series[(g.method, _extra(an, g, drop), base(r))][sig[which]].append(
                    r.get("best_test_acc"))
        series = {k: v for k, v in series.items() if len(v) >= 2}
        if series:
            panels.append((which, xlabel, series))
    if not panels:
        return None
    fig, axes = _panels(len(panels), 4.8, 3.6, sharex=False)
    rows: list[list[Any]] = []
    ns: list[int] = []
    for ax, (which, xlabel, series) in zip(axes, panels, strict=True):
        for (m, extra, b), pts in sorted(series.items(), key=lambda kv: (
                style.index[kv[0][0]], bases.index(kv[0][2]))):
            lab = _series(style, m, extra)
            xs = sorted(pts)
            stats = [mean_std(pts[x]) for x in xs]
            ns += [s[2] for s in stats]
            k = bases.index(b)
            _errorbar(ax, [100 * x for x in xs], stats, ms=5, ls=LINESTYLES[k % 4],
                      label=f"{lab}, {b}", **style.kw(m, hollow=k % 2 == 1))
            rows += [["read" if which == 0 else "write", f"{lab}, {b}", x, *s]
                     for x, s in zip(xs, stats, strict=True)]
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("best test accuracy", fontsize=8)
    _title(fig, "Best test accuracy vs weight noise", facts, _n_note(ns))
    fig.tight_layout()
    _save(fig, path, _handles(axes))
    return rows


def drift_plot(an: Analysis, facts: Facts, path: Path) -> list[list[Any]] | None:
    """Test accuracy vs time after programming, a panel per context (shared y), a line per
    method and compensation setting (on: solid, filled; off: dashed, hollow)."""
    if not any(isinstance(r.get("drift"), list) and r["drift"] for r in an.runs):
        return None
    style = Style(an)
    ctxs = [c for c in an.contexts() if any(
        g.context == c and any(r.get("drift") for r in g.runs) for g in an.groups)]
    fig, axes = _panels(len(ctxs), 4.8, 3.6)
    rows: list[list[Any]] = []
    ns: list[int] = []
    for ax, ctx in zip(axes, ctxs, strict=True):
        for g in (g for g in an.groups if g.context == ctx):
            pts: dict[Any, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
            for run in g.finished():
                for d in run.get("drift") or []:
                    t = d.get("t_seconds")
                    if isinstance(t, (int, float)) and math.isfinite(t):
                        pts[d.get("compensation")][float(t)].append(d.get("test_acc"))
            for comp in sorted(pts, key=lambda c: c is not True):
                by_t = pts[comp]
                ts = sorted(by_t)
                stats = [mean_std(by_t[t]) for t in ts]
                ns += [s[2] for s in stats]
                lab = an.method_label(g) + ("" if comp is None else
                                            f", compensation {'on' if comp else 'off'}")
                _errorbar(ax, ts, stats, ms=5, ls="-" if comp or comp is None else "--",
                          label=lab, **style.kw(g.method, hollow=comp is False))
                rows += [[*g.values.values(), disp(comp), t, *s]
                         for t, s in zip(ts, stats, strict=True)]
        ax.set_xscale("log")
        if an.context_fields:
            ax.set_title(_panel_title(an, ctx), fontsize=8)
        ax.grid(alpha=0.3)
    _axis_labels(axes, "time after programming (s)", "test accuracy")
    _title(fig, "Test accuracy after PCM drift", facts, _n_note(ns))
    fig.tight_layout()
    _save(fig, path, _handles(axes))
    return rows
