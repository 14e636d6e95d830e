"""Reports of a sweep folder: ``grapes-hw report DIR`` -> ``DIR/report.md``, CSV tables, PNGs.

Runs are read from ``DIR/runs.jsonl`` (the last record of each key counts), re-checked and
grouped by ``analysis`` (every setting that varies except the seed; "method" fields
are compared within a "context"). The report states what ran, read from the runs (dataset,
network, epochs, seeds, n per cell), never from the study's description. Per group it gives
the paper's numbers: best test accuracy over the epochs, mean and sample standard deviation
over seeds (ddof=1; empty for a single run), and the plateau-equation slowness (accepted fits
only, see ``metrics``); it flags runs that failed, diverged, stayed at chance level, wrote no
pulses on a device that must write or have a rejected fit, names the best method of each
setting and says, with a Welch t-test over seeds, whether GRAPES beats its plain baseline.

Files written (all in DIR): ``report.md``; ``summary.csv`` (one row per group),
``learning_curves.csv``, ``flagged_runs.csv`` and, when the data has them,
``comparisons.csv``, ``acc_vs_bits.csv``, ``acc_vs_noise.csv``, ``acc_vs_depth.csv``,
``drift.csv``; plots (``plots``) ``best_test_acc.png``, ``learning_curves.png``,
``optimizer_memory.png`` and, when there is something to draw, ``slowness.png``,
``pulses.png``, ``acc_vs_bits.png``, ``acc_vs_noise.png``, ``acc_vs_depth.png`` (a study of
equal-width networks of several depths), ``drift.png``. An output of an earlier report that
has nothing to show any more is removed.

Over 400 lines: one function per Markdown section of the report; the grouping and the
statistics are in ``analysis.py``, the figures in ``plots.py``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grapes_hw.studies import plots as plots
from grapes_hw.studies.analysis import (
    FINISHED,
    GRAPES_ONLY_FIELDS,
    Analysis,
    Group,
    disp,
    facts,
    load,
    n_classes,
    write_csv,
)
from grapes_hw.training.metrics import (
    CHANCE_MARGIN,
    MAX_SLOWNESS_FACTOR,
    MIN_EPOCHS,
    SLOWNESS_ZERO,
    welch_p,
)

OUTPUTS = ("summary.csv", "learning_curves.csv", "flagged_runs.csv", "comparisons.csv",
           "acc_vs_bits.csv", "acc_vs_noise.csv", "drift.csv", "best_test_acc.png",
           "slowness.png", "plateau_fits.png", "learning_curves.png", "pulses.png",
           "optimizer_memory.png",
           "acc_vs_bits.png", "acc_vs_noise.png", "drift.png", "tuning.csv", "tuning.png",
           "acc_vs_depth.csv", "acc_vs_depth.png",
           "device_state.csv", "saturation.png", "equal_lr.csv")
"""Every file besides report.md a report may write (stale ones are removed)."""


# ---- tables --------------------------------------------------------------------------------
def _fmt(m: float, s: float, digits: int = 4) -> str:
    if not math.isfinite(m):
        return "–"
    return f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if math.isfinite(s) else "")


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


SUMMARY_METRICS = ("best_test_acc", "final_test_acc", "slowness", "pulses_total",
                   "optimizer_state_bytes", "seconds_total")


def summary_rows(an: Analysis) -> tuple[list[str], list[list[Any]]]:
    header = [*an.group_fields, "n_runs", "n_ok", "n_diverged", "n_error", "n_flagged",
              "pulses_unit"]
    for m in SUMMARY_METRICS:
        header += [f"{m}_mean", f"{m}_std", f"{m}_n"]
    rows = []
    for g in an.groups:
        units = sorted({r["pulses_unit"] for r in g.finished()})
        row: list[Any] = [*g.values.values(), len(g.runs), g.count("ok"), g.count("diverged"),
                          g.count("error"), len(g.flagged()), " / ".join(units)]
        for m in SUMMARY_METRICS:
            row += list(g.stat(m))
        rows.append(row)
    return header, rows


def flag_rows(an: Analysis) -> list[list[Any]]:
    return [[*an.group_of(r).values.values(), (r.get("config") or {}).get("seed"), r.get("key"),
             r.get("status"), flag, detail]
            for r in an.runs for flag, detail in r["flags"]]


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
    slowness: tuple[float, float, int, int, float] = (math.nan, math.nan, 0, 0, math.nan)
    """Accepted fits only: mean, baseline mean, n, baseline n, Welch p."""
    lr_matched_baseline: bool = False
    """The baseline is the lr-matched SGD control, not the same method without GRAPES."""

    def outcome(self, alpha: float = 0.05) -> str:
        """``better``, ``worse`` (Welch p < alpha), ``no significant difference``, or
        ``untestable`` (fewer than 2 runs on a side)."""
        if not math.isfinite(self.p):
            return "untestable"
        if self.p >= alpha:
            return "no significant difference"
        return "better" if self.mean > self.mean_base else "worse"


def _verdict(ma: float, mb: float, p: float, n: int, nb: int, bl: str, alpha: float) -> str:
    diff = 100 * (ma - mb)
    if ma > mb and math.isfinite(p) and p < alpha:
        return f"beats {bl} (+{diff:.2f} pp, Welch p={p:.3g})"
    if ma > mb and math.isfinite(p):
        return f"does not significantly beat {bl} (+{diff:.2f} pp, Welch p={p:.3g}, n={n} vs {nb})"
    if ma > mb:
        return (f"has a higher mean than {bl} (+{diff:.2f} pp) but with n={n} vs {nb} no "
                "significance test is possible")
    return f"does not beat {bl} ({diff:+.2f} pp" + (f", Welch p={p:.3g})" if math.isfinite(p)
                                                   else ")")


def _baselines(an: Analysis, g: Group) -> list[Group]:
    """The groups a GRAPES group ``g`` is compared with, in the same context.

    The *same method without GRAPES*: GRAPES off, not lr-matched, the same optimizer and the
    same other method settings, GRAPES-only settings (``GRAPES_ONLY_FIELDS``) ignored. At the
    same lr where the study has one; otherwise the one such group at its own lr (a study
    that gives each rule its own lr, e.g. the lrs tuned elsewhere); none when several
    lrs but not GRAPES' own are there to choose from. Then every *lr-matched SGD control*
    (GRAPES off, ``lr_matched``) with the same optimizer."""
    f = an.method_fields
    m = dict(zip(f, g.method, strict=True))
    opt = str((g.runs[0].get("config") or {}).get("optimizer", ""))
    loose = {"grapes", "lr", "lr_matched", *GRAPES_ONLY_FIELDS}
    same, other_lr, matched = [], [], []
    for o in an.groups:
        om = dict(zip(f, o.method, strict=True))
        if (o.context != g.context or om["grapes"] != "off"
                or str((o.runs[0].get("config") or {}).get("optimizer", "")) != opt):
            continue
        if om.get("lr_matched") == "true":
            matched.append(o)
        elif all(om[k] == m[k] for k in f if k not in loose):
            (same if om.get("lr") == m.get("lr") else other_lr).append(o)
    matched_same = [o for o in matched
                    if dict(zip(f, o.method, strict=True)).get("lr") == m.get("lr")]
    return ((same or (other_lr if len(other_lr) == 1 else []))
            + (matched_same or (matched if len(matched) == 1 else [])))


def grapes_comparisons(an: Analysis, alpha: float = 0.05) -> list[Comparison]:
    """Each GRAPES group against the same method with GRAPES off and the lr-matched SGD
    control (``_baselines``); a group with neither is in ``unmatched_grapes``."""
    if "grapes" not in an.method_fields:
        return []
    gi = an.method_fields.index("grapes")
    out = []
    for g in an.groups:
        if g.method[gi] == "off":
            continue
        opt = str((g.runs[0].get("config") or {}).get("optimizer", ""))
        for b in _baselines(an, g):
            a_vals, b_vals = g.values_of("best_test_acc"), b.values_of("best_test_acc")
            if not a_vals or not b_vals:
                continue
            ma, mb = float(np.mean(a_vals)), float(np.mean(b_vals))
            p = welch_p(a_vals, b_vals)
            bl = an.method_label(b)
            sa, sb = g.values_of("slowness"), b.values_of("slowness")
            slow = (float(np.mean(sa)) if sa else math.nan, float(np.mean(sb)) if sb else math.nan,
                    len(sa), len(sb), welch_p(sa, sb))
            out.append(Comparison(an.context_label(g), an.method_label(g), bl, ma, mb,
                                  len(a_vals), len(b_vals), p,
                                  _verdict(ma, mb, p, len(a_vals), len(b_vals), bl, alpha),
                                  opt, slow, dict(zip(an.method_fields, b.method,
                                                      strict=True)).get("lr_matched") == "true"))
    return out


def unmatched_grapes(an: Analysis) -> list[str]:
    """GRAPES groups with no baseline to compare with (``_baselines``), as 'context: method'."""
    if "grapes" not in an.method_fields:
        return []
    gi = an.method_fields.index("grapes")
    return [f"{an.context_label(g)}: {an.method_label(g)}" for g in an.groups
            if g.method[gi] != "off" and not any(
                b.values_of("best_test_acc") for b in _baselines(an, g))
            and g.values_of("best_test_acc")]


# ---- the report ----------------------------------------------------------------------------
def write_report(dir_: str | Path) -> Path:
    """Write report.md, the CSV tables and the PNG plots into ``dir_``; return report.md."""
    d = Path(dir_)
    an = load(d)
    fx = facts(an)
    files: list[str] = []
    pngs: list[tuple[str, str]] = []
    notes: list[str] = []

    if not an.runs:  # a tuned study whose seeds have not started: its tuning so far
        from grapes_hw.studies.report_tuning import device_section, tuning_section

        tune_md, tune_files = tuning_section(an, d, fx)
        dev_md, dev_files = device_section(an, d, fx)
        st = an.study or {}
        md = [f"# Report: {st.get('name') or 'sweep'} (tuning only)", "",
              *[f"> warning: {w}" for w in an.warnings], "", *tune_md, *dev_md,
              "Files: " + ", ".join(f"`{f}`" for f in ["report.md", *tune_files, *dev_files])
              + ".", ""]
        for stale in set(OUTPUTS) - set(tune_files) - set(dev_files):
            (d / stale).unlink(missing_ok=True)
        (d / "report.md").write_text("\n".join(md))
        return d / "report.md"
    header, rows = summary_rows(an)
    write_csv(d / "summary.csv", header, rows)
    write_csv(d / "flagged_runs.csv", [*an.group_fields, "seed", "key", "status", "flag",
                                       "detail"], flag_rows(an))
    files += ["summary.csv", "flagged_runs.csv"]

    def png(name: str, caption: str, wrote: bool) -> None:
        if wrote:
            pngs.append((name, caption))

    png("best_test_acc.png", "Best test accuracy per setting and rule",
        plots.metric_plot(an, fx, "best_test_acc", d / "best_test_acc.png",
                          "best test accuracy", "Best test accuracy", chance=_chance(an)))
    png("slowness.png", "Plateau-fit slowness (accepted fits only; lower is faster)",
        plots.metric_plot(an, fx, "slowness", d / "slowness.png",
                          "slowness (epochs to half plateau)",
                          "Slowness of the plateau fit, accepted fits only (lower is faster)"))
    png("plateau_fits.png", "Test curves with their plateau fits (dashed; a = plateau "
        "accuracy, s = slowness, means of the accepted fits)",
        plots.plateau_fits(an, fx, d / "plateau_fits.png"))
    lc_rows = plots.learning_curves(an, fx, d / "learning_curves.png")
    if not lc_rows:  # every run failed before its first test: an empty plot says nothing
        (d / "learning_curves.png").unlink(missing_ok=True)
        notes.append("No run has a tested epoch (every run failed, see *Flagged runs*): no "
                     "learning curves.")
    png("learning_curves.png", "Learning curves (mean test accuracy per epoch, band = ± std "
        "over seeds where n > 1; data in `learning_curves.csv`)", bool(lc_rows))
    write_csv(d / "learning_curves.csv", [*an.group_fields, "epoch", "test_acc_mean",
                                          "test_acc_std", "n"], lc_rows)
    files.append("learning_curves.csv")
    extra = [("acc_vs_bits", plots.acc_vs_bits, ["series", "bits"], "Accuracy vs weight bits"),
             ("acc_vs_noise", plots.acc_vs_noise, ["noise", "series", "sigma"],
              "Accuracy vs read / write noise"),
             ("drift", plots.drift_plot, [*an.group_fields, "compensation", "t_seconds"],
              "Accuracy vs time after programming (drift)")]
    for name, fn, cols, caption in extra:
        ex_rows = fn(an, fx, d / f"{name}.png")
        if ex_rows is not None:
            mean = "test_acc" if name == "drift" else "best_test_acc"
            write_csv(d / f"{name}.csv", [*cols, f"{mean}_mean", f"{mean}_std", "n"], ex_rows)
            files.append(f"{name}.csv")
            png(f"{name}.png", f"{caption} (data in `{name}.csv`)", True)
    depth_rows = plots.acc_vs_depth(an, fx, d / "acc_vs_depth.png")
    if depth_rows is not None:
        write_csv(d / "acc_vs_depth.csv", ["rule", "width", "depth", "metric", "mean", "std",
                                           "n"], depth_rows)
        files.append("acc_vs_depth.csv")
        png("acc_vs_depth.png", "Best test accuracy and plateau-fit slowness vs the number of "
            "hidden layers, a column per width (data in `acc_vs_depth.csv`)", True)
    png("pulses.png", "Weight writes per run, in the unit each backend counts (devices "
        "programmed by writes only: float weights, written digitally at every update, and "
        "analog inference tiles, not pulsed, are left out)",
        plots.pulses_plot(an, fx, d / "pulses.png"))
    png("optimizer_memory.png", "Optimizer state per rule",
        plots.memory_plot(an, fx, d / "optimizer_memory.png"))
    written = {n for n, _ in pngs}
    for name, why in (("slowness.png", "No run has an accepted plateau fit: no slowness plot."),
                      ("pulses.png", "No device here is programmed by writes (float weights "
                                     "write every weight digitally at every update; analog "
                                     "inference tiles are not pulsed): no pulse plot; the "
                                     "counts are in the table."),
                      ("optimizer_memory.png", "No rule keeps optimizer state (0 bytes in "
                                               "every run): no memory plot.")):
        if name not in written:
            notes.append(why)
    from grapes_hw.studies.report_tuning import device_section, tuning_section

    tune_md, tune_files = tuning_section(an, d, fx)
    dev_md, dev_files = device_section(an, d, fx)
    files += [f for f in tune_files + dev_files if f.endswith(".csv")]
    extra_png = [f for f in tune_files + dev_files if f.endswith(".png")]
    comps = grapes_comparisons(an)
    if comps:
        write_csv(d / "comparisons.csv",
                  ["context", "method", "baseline", "best_test_acc_mean", "baseline_mean", "n",
                   "n_baseline", "welch_p", "verdict", "slowness_mean", "baseline_slowness_mean",
                   "slowness_n", "baseline_slowness_n", "slowness_welch_p"],
                  [[c.context, c.method, c.baseline, c.mean, c.mean_base, c.n, c.n_base, c.p,
                    c.verdict, *c.slowness] for c in comps])
        files.append("comparisons.csv")
    files += [name for name, _ in pngs] + extra_png
    for stale in set(OUTPUTS) - set(files):
        (d / stale).unlink(missing_ok=True)

    md = _markdown(an, fx, comps, pngs, files, notes, tune_md + dev_md)
    out = d / "report.md"
    tmp = d / "report.md.tmp"
    tmp.write_text(md)
    tmp.replace(out)
    return out


def _chance(an: Analysis) -> float | None:
    """1 / n_classes when every run has the same number of classes."""
    ns = {n_classes(r) for r in an.runs}
    return 1.0 / ns.pop() if len(ns) == 1 and None not in ns else None


def _what_ran(an: Analysis, fx) -> list[str]:
    st = an.study or {}
    statuses = Counter(str(r.get("status", "?")) for r in an.runs)
    counts = ", ".join(f"{n} {k}" for k, n in sorted(statuses.items()))
    lines = ["## What ran", "", "Read from the runs' own records:", "",
             f"- Dataset: {'; '.join(fx.datasets)}",
             f"- Network: {'; '.join(fx.networks)}",
             f"- Epochs: {fx.epochs_text()}",
             f"- Seeds: {ranges_text(fx.seeds)}",
             f"- Cells (groups of runs that differ only in the seed): {fx.n_groups}, with "
             f"{fx.n_text()} finished run{'s' if fx.n_per_cell[1] != 1 else ''} each",
             f"- Runs with results: **{len(an.runs)}** ({counts})"
             + (f", plus {len(an.tune_runs)} learning-rate tuning runs." if an.tune_runs
                else ".")]
    secs = [sum(float(r.get("seconds_total") or 0.0) for r in rs)
            for rs in (an.runs, an.tune_runs)]
    lines.append(f"- Compute: {_hours(secs[0] + secs[1])} in all, the sum of the runs' "
                 "wall-clock times (each run on one worker)"
                 + (f": {_hours(secs[0])} for the study's runs, {_hours(secs[1])} for "
                    "tuning." if an.tune_runs else "."))
    if st.get("runs") is not None:
        planned = {r["key"] for r in st["runs"]}
        have = {r["key"] for r in an.runs + an.tune_runs}
        missing, stale = planned - have, have - planned
        waiting = int(st.get("waiting_for_tuning") or 0)
        lines.append(f"- The study plans {len(planned) + waiting} runs; "
                     + (f"**{len(missing) + waiting} have no result yet** (the sweep is not "
                        "finished; numbers below are partial"
                        + (f"; {waiting} wait for their group's tuning" if waiting else "")
                        + ")." if missing or waiting else "all have a result.")
                     + (f" {len(stale)} results are from runs no longer in the study file; "
                        "they are included." if stale else ""))
    lines.append("")
    if st.get("question") or st.get("description"):
        lines += ["## The study as planned", "", "From the study file (a plan, not a record; "
                  "where it differs from *What ran*, the runs are right)"
                  + (", **quick variant**" if st.get("quick") else "") + ":", ""]
        if st.get("question"):
            lines += [f"**Question.** {st['question']}", ""]
        if st.get("description"):
            lines += [f"*Description.* {st['description']}", ""]
    return lines


def _hours(seconds: float) -> str:
    """``"1.43 h"`` or, under an hour, ``"12 min"``."""
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def ranges_text(seeds: list[int]) -> str:
    from grapes_hw.studies.analysis import ranges

    return f"{ranges(seeds)} ({len(seeds)} seed{'s' if len(seeds) != 1 else ''})"


def _slow_cell(g: Group) -> str:
    sl, ss, k = g.stat("slowness")
    n = len(g.finished())
    if k == 0:
        return "n/a" if n else "–"
    return _fmt(sl, ss, 3) + (f" ({k} of {n} fits)" if k < n else "")


def _results(an: Analysis) -> list[str]:
    units = sorted({r["pulses_unit"] for r in an.runs if r.get("status") in FINISHED})
    one_unit = len(units) == 1
    tuned = [f"{an.tuned} (tuned)"] if an.tuned else []
    head = [*an.group_fields, *tuned, "runs", "n", "diverged", "errors", "flagged",
            "best test acc",
            "final test acc", "slowness",
            f"pulses ({units[0]})" if one_unit else "pulses", "optimizer state (B)"]
    rows = []
    for g in an.groups:
        ba, bs, n = g.stat("best_test_acc")
        fa, fs, _ = g.stat("final_test_acc")
        pu, _, _ = g.stat("pulses_total")
        mem, _, _ = g.stat("optimizer_state_bytes")
        nd, ne, nf = g.count("diverged"), g.count("error"), len(g.flagged())
        g_units = sorted({r["pulses_unit"] for r in g.finished()})
        pulses = f"{pu:.3g}" if math.isfinite(pu) else "–"
        if not one_unit and g_units and math.isfinite(pu):
            pulses += f" {' / '.join(g_units)}"
        tv = ["/".join(sorted({disp((r.get("config") or {}).get(an.tuned)) for r in g.runs}))
              ] if an.tuned else []
        rows.append([*g.values.values(), *tv, len(g.runs), n, f"**{nd}**" if nd else "0",
                     f"**{ne}**" if ne else "0", f"**{nf}**" if nf else "0", _fmt(ba, bs),
                     _fmt(fa, fs), _slow_cell(g), pulses,
                     f"{mem:.0f}" if math.isfinite(mem) else "–"])
    return ["## Results per group", "", _md_table(head, rows), "",
            "*n*: finished runs (ok or diverged) in the means; *final test acc* (after the "
            "last epoch) leaves out diverged runs, whose weights end non-finite (their best "
            "accuracy, before they diverged, is in *best test acc*). Table as CSV: "
            "`summary.csv`.", ""]


def _best_per_setting(an: Analysis) -> list[str]:
    if not an.method_fields:
        return []
    lines = ["## Best method per setting", ""]
    for ctx in an.contexts():
        gs = [g for g in an.groups if g.context == ctx and g.stat("best_test_acc")[2] > 0]
        if not gs:
            continue
        ranked = sorted(gs, key=lambda g: -g.stat("best_test_acc")[0])
        best = ranked[0]
        mu, sd, n = best.stat("best_test_acc")
        tail = ""
        if len(ranked) > 1:
            m2, s2, _ = ranked[1].stat("best_test_acc")
            p = welch_p(best.values_of("best_test_acc"), ranked[1].values_of("best_test_acc"))
            tail = (f"; next: {an.method_label(ranked[1])} {_fmt(m2, s2)}"
                    + (f" (Welch p={p:.3g}" + (", not a significant difference)" if p >= 0.05
                                               else ")")
                       if math.isfinite(p) else " (too few seeds for a test)"))
        label = an.context_label(best) if an.context_fields else "All runs"
        if all(len(g.flagged("chance")) == len(g.finished()) for g in gs):
            tail += " Every rule stays at chance level here: none learned"
        lines.append(f"- {label}: best is **{an.method_label(best)}** with "
                     f"{_fmt(mu, sd)} (n={n}){tail}.")
    return [*lines, ""]


def _grapes(an: Analysis, comps: list[Comparison]) -> list[str]:
    unmatched = unmatched_grapes(an)
    if not comps and not unmatched:
        return ([f"(GRAPES is `{an.fixed['grapes']}` in every run: no GRAPES comparison.)", ""]
                if "grapes" in an.fixed else [])
    lines = ["## Does GRAPES beat its baseline?", ""]
    if comps:
        wins = sum(c.verdict.startswith("beats") for c in comps)
        higher = sum(not c.verdict.startswith("beats") and c.mean > c.mean_base for c in comps)
        lines += [f"Of {len(comps)} comparisons of a GRAPES variant with the same optimizer "
                  "without GRAPES (same lr where the study has it, else that method at its "
                  "own lr) or with the lr-matched SGD control, GRAPES is significantly "
                  f"better (Welch t-test over seeds, p < 0.05) in **{wins}**, better on "
                  f"average but not significantly (or with too few seeds to test) in "
                  f"{higher}, and **not better in {len(comps) - wins - higher}**. Slowness "
                  "is compared over accepted plateau fits only.", ""]
    for c in comps:
        s, sb, k, kb, ps = c.slowness
        slow = (f"slowness {s:.3f} vs {sb:.3f} (n={k} vs {kb}"
                + (f", Welch p={ps:.3g})" if math.isfinite(ps) else ")")
                if k and kb else "slowness n/a (no accepted fit on one side)")
        lines.append(f"- {c.context}: {c.method} ({c.mean:.4f}, n={c.n}) {c.verdict}; {slow}.")
    # one summary per optimizer: "<opt> + GRAPES is ... than <opt> in N settings"
    direct = [c for c in comps if not c.lr_matched_baseline]
    for opt in dict.fromkeys(c.optimizer for c in direct):
        plain = [c for c in direct if c.optimizer == opt]
        name = "SGD" if opt == "sgd" else opt
        lines.append("")
        for outcome, words in (("better", f"significantly better than {name}"),
                               ("worse", f"significantly worse than {name}"),
                               ("no significant difference",
                                f"not significantly different from {name} (p >= 0.05)"),
                               ("untestable", f"not testable against {name} (fewer than 2 "
                                              "runs on a side)")):
            many = len({c.method for c in plain}) > 1
            where = list(dict.fromkeys(f"{c.context} ({c.method})" if many else c.context
                                       for c in plain if c.outcome() == outcome))
            if where:
                lines.append(f"- {name} + GRAPES is {words} in {len(where)} setting"
                             f"{'s' if len(where) != 1 else ''}: " + "; ".join(where) + ".")
    if unmatched:
        lines += ["", f"{len(unmatched)} GRAPES group{'s have' if len(unmatched) != 1 else ' has'}"
                  " no baseline here (no run of the same method without GRAPES, or several at "
                  "other lrs and none at GRAPES' own), so no comparison: "
                  + "; ".join(unmatched) + "."]
    return [*lines, *(["", "Table as CSV: `comparisons.csv`."] if comps else []), ""]


_FIT_REASONS = (("need at least", "too few epochs"), ("chance level", "curve at chance level"),
                ("max accuracy", "fitted max accuracy > 1"), ("negative", "negative slowness"),
                ("beyond", f"slowness beyond {MAX_SLOWNESS_FACTOR:g}x the epochs run"),
                ("within rounding", "slowness 0 within rounding (fit on its bound)"))


def _fit_reason(detail: str) -> str:
    return next((name for key, name in _FIT_REASONS if key in detail), "fit failed")


def _flagged(an: Analysis) -> list[str]:
    lines = ["## Flagged runs", "",
             "A run is flagged when it failed (error), diverged, stayed at chance level (best "
             f"test accuracy <= 1/n_classes + {CHANCE_MARGIN:g}, i.e. 0.15 for 10 classes), "
             "wrote 0 pulses on a device that must write (fixed point; pulsed analog tiles) "
             "although epochs ran, or has a rejected plateau fit. A fit is rejected (shown as "
             "n/a, left out of slowness means, plots and comparisons) with fewer than "
             f"{MIN_EPOCHS} epochs, a fitted max accuracy above 1, a negative slowness, a "
             f"slowness beyond {MAX_SLOWNESS_FACTOR:g}x the epochs run, a curve at chance level, "
             f"or a slowness below {SLOWNESS_ZERO:g} epochs (0 within rounding: the fit sits on "
             "its bound, as for a flat, falling or erratic curve). "
             "The fits are re-done from each run's stored test "
             "accuracies under these rules (a stored fit of an older version is not used).", ""]
    flagged = [r for r in an.runs if r["flags"]]
    if not flagged:
        return [*lines, "None: every run finished, learned, wrote and has an accepted fit.", ""]
    lines += [f"**{len(flagged)} of {len(an.runs)} runs flagged** (each in "
              "`flagged_runs.csv`):", ""]
    kinds = ("chance", "zero pulses", "diverged", "error", "fit rejected")
    head = [*an.group_fields, "runs", "flagged", "at chance", "zero pulses", "diverged",
            "errors", "fit rejected"]
    rows = [[*g.values.values(), len(g.runs), len(g.flagged()),
             *(len(g.flagged(k)) for k in kinds)] for g in an.groups if g.flagged()]
    lines += [_md_table(head, rows), ""]
    reasons = Counter(_fit_reason(d) for r in an.runs for f, d in r["flags"]
                      if f == "fit rejected")
    if reasons:
        lines += ["Plateau fits rejected: " + ", ".join(f"{n} {why}" for why, n in
                                                         reasons.most_common()) + ".", ""]
    worst = [r for r in flagged if any(f not in ("chance", "zero pulses", "fit rejected")
                                       for f, _ in r["flags"])]
    if worst:
        lines += ["Runs that failed or diverged:", ""]
        for r in sorted(worst, key=lambda r: (str(r.get("status")), str(r.get("key")))):
            lab = " ".join(f"{k}={v}" for k, v in an.group_of(r).values.items()) or "-"
            why = "; ".join(f"error: `{d}`" if f == "error" else d if f == "diverged"
                            else f"{f}: {d}" for f, d in r["flags"])
            lines.append(f"- `{r.get('key')}` {lab} seed={(r.get('config') or {}).get('seed')}:"
                         f" **{r.get('status')}** {why}")
        lines.append("")
    return lines


def _markdown(an: Analysis, fx, comps: list[Comparison], pngs, files, notes=(),
              sections=()) -> str:
    st = an.study or {}
    title = f"# Report: {st.get('name') or 'sweep'}{' (quick variant)' if st.get('quick') else ''}"
    lines = [title, "", f"*{fx.line()}.*", "", *_what_ran(an, fx)]
    lines += ["Numbers are the paper's: the best test accuracy over the epochs of a run, "
              "then mean ± sample standard deviation (ddof=1) over seeds; *slowness* is the "
              "plateau-equation fit `acc(epoch) = max_acc * epoch / (slowness + epoch)`, epochs "
              "to half the plateau, lower is faster (accepted fits only, see *Flagged runs*). "
              "Diverged runs count with the best accuracy they reached before diverging; runs "
              "that failed with an error are left out of all means. *pulses* are in the unit "
              "the device's backend counts: `writes` (float: every weight at every update), "
              "`cells changed` (fixed point), `estimated programming steps` (aihwkit analog "
              "tiles, |dW| / dw_min per write).", ""]
    if an.fixed:
        from grapes_hw.training.config import inactive_fields

        # a setting that acts on none of the runs (momentum of SGD runs, time_steps of an
        # MLP) is recorded, not used: listed apart, so no one reads it as part of the method
        unused = [k for k in an.fixed
                  if an.runs and all(k in inactive_fields(r.get("config") or {})
                                     for r in an.runs)]
        lines += ["## Settings shared by all runs", "",
                  ", ".join(f"`{k}={v}`" for k, v in an.fixed.items() if k not in unused), ""]
        if unused:
            lines += ["Recorded but acting on none of these runs (settings of other models "
                      "or rules): " + ", ".join(f"`{k}={an.fixed[k]}`"
                                                          for k in unused) + ".", ""]
    lines += [f"> warning: {w}" for w in an.warnings] + ([""] if an.warnings else [])
    lines += _results(an) + _best_per_setting(an) + _grapes(an, comps) + list(sections)
    lines += _flagged(an)
    lines += ["## Plots", "", "One colour and marker per rule in every figure; error bars "
              "(± std over seeds) only where n > 1.", ""]
    for png, caption in pngs:
        lines += [f"{caption}:", "", f"![{caption.split(' (')[0]}]({png})", ""]
    lines += [*(f"{n}\n" for n in notes)]
    lines += ["Files: " + ", ".join(f"`{f}`" for f in ["report.md", *files]) + ".", ""]
    return "\n".join(lines)
