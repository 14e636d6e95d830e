"""Convergence metrics: the GRAPES paper's plateau equation.

    accuracy(epoch) = max_accuracy * epoch / (slowness + epoch)

fitted (scipy ``curve_fit``) to the test-accuracy curve over the first 100 epochs (or all,
if fewer). ``slowness`` is the number of epochs to reach half the plateau: lower is faster.

A fit is only *accepted* (``ok``) when it describes a curve that learned and its numbers are
physically possible (``plateau_check``): at least ``MIN_EPOCHS`` epochs, a fitted maximum
accuracy of at most 1, a slowness that is not negative and not beyond
``MAX_SLOWNESS_FACTOR`` times the epochs run, a best accuracy above chance level
(``chance_level``: 1 / n_classes + ``CHANCE_MARGIN``), and not a slowness of 0 within
rounding (below ``SLOWNESS_ZERO``): such a fit sits on its bound 0, as it does for a flat,
falling or erratic curve (a curve that did not learn), and measures nothing. A
rejected fit keeps its fitted numbers (so the reason can be checked) but ``ok`` is False
with the reason; its slowness must be shown as n/a and left out of means, plots and
comparisons. ``result_record`` stores ``slowness`` None for a rejected fit; reports re-check
stored results (``studies.analysis.recheck``), so older runs get these rules too.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

MIN_EPOCHS = 3
"""Fewer epochs than this cannot pin down two parameters and a plateau."""

MAX_SLOWNESS_FACTOR = 10.0
"""A slowness beyond this many times the epochs run is an extrapolation, not a measurement."""

SLOWNESS_ZERO = 0.01
"""Slowness below this (epochs) is 0 within rounding: on a flat, falling or erratic curve the
fit runs to its lower bound 0 and stops anywhere short of it (1e-17 to 1e-3 seen); a real
curve this fast would have to reach 99% of its plateau within the first epoch."""

CHANCE_MARGIN = 0.05
"""Accuracy up to ``1 / n_classes + CHANCE_MARGIN`` (0.15 for 10 classes) is chance level."""


def plateau(epoch, max_accuracy, slowness):
    return max_accuracy * epoch / (slowness + epoch)


def chance_level(n_classes: int) -> float:
    """The accuracy at or below which a run is taken not to have learned."""
    return 1.0 / n_classes + CHANCE_MARGIN


def plateau_check(max_accuracy: float, slowness: float, test_acc: list[float] | np.ndarray,
                  n_classes: int | None = None, max_epochs: int = 100) -> str:
    """Why a fitted ``(max_accuracy, slowness)`` of the curve ``test_acc`` is not acceptable,
    or "" when it is. ``n_classes`` None skips the chance-level rule."""
    acc = np.asarray([np.nan if v is None else v for v in test_acc], dtype=float)[:max_epochs]
    n_run = int(acc.size)
    acc = acc[np.isfinite(acc)]
    if acc.size < MIN_EPOCHS:
        return f"need at least {MIN_EPOCHS} epochs, got {acc.size}"
    if not (math.isfinite(max_accuracy) and math.isfinite(slowness)):
        return "non-finite fit"
    best = float(acc.max())
    if n_classes is not None and best <= chance_level(n_classes):
        return (f"did not learn: best accuracy {best:.4f} is at chance level "
                f"(<= {chance_level(n_classes):.2f} for {n_classes} classes)")
    if max_accuracy > 1.0:
        return f"fitted max accuracy {max_accuracy:.4g} > 1"
    if slowness < 0.0:
        return f"negative slowness {slowness:.4g}"
    if slowness > MAX_SLOWNESS_FACTOR * n_run:
        return (f"slowness {slowness:.4g} beyond {MAX_SLOWNESS_FACTOR:g}x the {n_run} epochs "
                "run")
    if slowness < SLOWNESS_ZERO:
        return (f"slowness {slowness:.2g} is 0 within rounding (< {SLOWNESS_ZERO:g}): the fit "
                f"sits on its bound, as on a flat, falling or erratic curve "
                f"(epoch 1: {acc[0]:.4f}, best {best:.4f}, last {acc[-1]:.4f})")
    return ""


def fit_plateau(test_acc: list[float] | np.ndarray, max_epochs: int = 100,
                n_classes: int | None = None) -> dict:
    """Fit the plateau equation; returns ``{max_accuracy, slowness, ok, reason}``.

    Epochs are numbered from 1; missing (None / non-finite) epochs are skipped. ``ok`` is
    False with the reason for a failed fit (numbers None) and for a rejected one (numbers
    kept, see ``plateau_check``); a failure is never silently replaced.
    """
    acc = np.asarray([np.nan if v is None else v for v in test_acc], dtype=float)[:max_epochs]
    epochs = np.arange(1, acc.size + 1, dtype=float)
    finite = np.isfinite(acc)
    acc_f, epochs = acc[finite], epochs[finite]
    if acc_f.size < MIN_EPOCHS:
        return {"max_accuracy": None, "slowness": None, "ok": False,
                "reason": f"need at least {MIN_EPOCHS} epochs, got {acc_f.size}"}
    from scipy.optimize import OptimizeWarning, curve_fit

    top = float(acc_f.max())
    p0 = (max(top, 1e-3), 0.5)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            (a, s), _ = curve_fit(plateau, epochs, acc_f, p0=p0,
                                  bounds=([0.0, 0.0], [np.inf, np.inf]), maxfev=10000)
    except (RuntimeError, ValueError) as e:
        return {"max_accuracy": None, "slowness": None, "ok": False, "reason": str(e)}
    if not (math.isfinite(a) and math.isfinite(s)):
        return {"max_accuracy": None, "slowness": None, "ok": False, "reason": "non-finite fit"}
    reason = plateau_check(float(a), float(s), acc, n_classes, max_epochs)
    return {"max_accuracy": float(a), "slowness": float(s), "ok": not reason, "reason": reason}


def welch_p(a: list[float], b: list[float]) -> float:
    """Two-sided Welch t-test p value (``scipy.stats.ttest_ind(equal_var=False)``); nan with
    fewer than 2 values on a side; with no spread on either side 0 if the means differ, else
    1 (scipy gives nan there)."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if min(a) == max(a) and min(b) == max(b):
        return 0.0 if a[0] != b[0] else 1.0
    from scipy import stats

    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)
