"""The width x depth table of docs/results.md, from a depth study's results folder.

    python tools/depth_table.py studies/results/depth_scaling

One row per network (equal hidden widths, in depth order per width): for SGD, the lr-matched
SGD control and SGD + GRAPES (propagating), the best test accuracy mean ± std over the seeds
that finished, and the plateau-fit slowness (accepted fits only, re-checked as the report
does); then GRAPES' difference to SGD and to the control in points with its Welch p value
(n/a with fewer than 2 runs on a side). ``n`` is the number of seeds per rule with a test
accuracy (the smallest, where they differ); ``diverged`` counts, per rule, the runs whose
weights went non-finite (one that diverged before its first test has no accuracy: it is not
in the means). Prints Markdown; the numbers are the report's (``grapes_hw.studies``).
"""

from __future__ import annotations

import argparse
import math
import sys

from grapes_hw.errors import ConfigError
from grapes_hw.studies.analysis import load, mean_std
from grapes_hw.studies.plots import uniform_widths
from grapes_hw.training.metrics import welch_p

RULES = (("SGD", "sgd"), ("lr-matched", "sgd (lr-matched control)"),
         ("GRAPES", "sgd + GRAPES (propagating)"))


def _ms(values: list[float], digits: int) -> str:
    mean, sd, n = mean_std(values)
    if not n:
        return "–"
    return f"{mean:.{digits}f}" if n < 2 else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _diff(a: list[float], b: list[float]) -> str:
    if not a or not b:
        return "–"
    d = 100 * (sum(a) / len(a) - sum(b) / len(b))
    p = welch_p(a, b)
    return f"{d:+.1f} (p {'n/a' if math.isnan(p) else f'{p:.2g}'})"


def table(folder: str) -> str:
    an = load(folder)
    if an.context_fields != ["layers"]:
        varying = ", ".join(an.context_fields) or "nothing"
        raise ConfigError("DIR", f"{folder}: not a depth study (its runs differ in {varying}, "
                                 "not only in layers)")
    # (width, depth) -> rule label -> (best accuracies, slownesses, diverged runs)
    cells: dict[tuple[int, int], dict[str, tuple[list[float], list[float], int]]] = {}
    for g in an.groups:
        key = uniform_widths(g.context[0])
        if key is None:
            continue
        cells.setdefault(key, {})[an.label_of(g.method)] = (g.values_of("best_test_acc"),
                                                            g.values_of("slowness"),
                                                            g.count("diverged"))
    head = ["width", "hidden layers", "n",
            *[f"{short} best acc" for short, _ in RULES],
            *[f"{short} slowness" for short, _ in RULES],
            "GRAPES - SGD (points)", "GRAPES - lr-matched (points)", "diverged"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (w, d), by in sorted(cells.items()):
        acc = {short: by.get(label, ([], [], 0))[0] for short, label in RULES}
        slow = {short: by.get(label, ([], [], 0))[1] for short, label in RULES}
        diverged = ", ".join(f"{short} {by[label][2]}" for short, label in RULES
                             if label in by and by[label][2]) or "–"
        n = min(len(v) for v in acc.values())
        lines.append("| " + " | ".join([
            str(w), str(d), str(n), *[_ms(acc[s], 3) for s, _ in RULES],
            *[_ms(slow[s], 2) for s, _ in RULES],
            _diff(acc["GRAPES"], acc["SGD"]), _diff(acc["GRAPES"], acc["lr-matched"]),
            diverged]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", help="a depth study's results folder (with runs.jsonl)")
    args = ap.parse_args(argv)
    try:
        print(table(args.folder))
    except ConfigError as e:
        print(f"depth_table: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
