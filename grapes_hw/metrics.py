"""Convergence metrics: the GRAPES paper's plateau equation.

    accuracy(epoch) = max_accuracy * epoch / (slowness + epoch)

fitted (scipy ``curve_fit``) to the test-accuracy curve over the first 100 epochs (or all,
if fewer). ``slowness`` is the number of epochs to reach half the plateau: lower is faster.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit


def plateau(epoch, max_accuracy, slowness):
    return max_accuracy * epoch / (slowness + epoch)


def fit_plateau(test_acc: list[float] | np.ndarray, max_epochs: int = 100) -> dict:
    """Fit the plateau equation; returns ``{max_accuracy, slowness, ok, reason}``.

    Epochs are numbered from 1. Needs at least two finite points; a failed fit is reported
    (``ok`` False with the reason), never silently replaced.
    """
    acc = np.asarray(test_acc, dtype=float)[:max_epochs]
    epochs = np.arange(1, acc.size + 1, dtype=float)
    finite = np.isfinite(acc)
    acc, epochs = acc[finite], epochs[finite]
    if acc.size < 2:
        return {"max_accuracy": None, "slowness": None, "ok": False,
                "reason": "need at least 2 epochs"}
    top = float(acc.max())
    p0 = (max(top, 1e-3), 0.5)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            (a, s), _ = curve_fit(plateau, epochs, acc, p0=p0,
                                  bounds=([0.0, 0.0], [np.inf, np.inf]), maxfev=10000)
    except (RuntimeError, ValueError) as e:
        return {"max_accuracy": None, "slowness": None, "ok": False, "reason": str(e)}
    if not (math.isfinite(a) and math.isfinite(s)):
        return {"max_accuracy": None, "slowness": None, "ok": False, "reason": "non-finite fit"}
    return {"max_accuracy": float(a), "slowness": float(s), "ok": True, "reason": ""}
