"""Per-rule tuning of one setting (the learning rate) before a study's seeds run.

A study's ``[tune]`` table names one ``TrainConfig`` field with a list of values, the metric,
and the cheaper settings of the tuning runs::

    [tune]
    lr = [0.2, 0.1, 0.05, 0.02, 0.01, 0.005]
    metric = "val_acc"        # best validation accuracy over the epochs (or "final_val_acc")
    epochs = 3                # tuning runs: fewer epochs ...
    train_subset = 12000      # ... a subset of the training set ...
    val_fraction = 0.2        # ... of which this fraction is the validation split
    seeds = 1                 # tuning seeds 0..N-1 (the metric is their mean)

The study's runs fall into **groups** that differ only in seed and the tuned field (one group
per backend x rule, say). For every group the sweep first trains the grid of values on a
seeded validation split carved out of the *training* set (the test set is never looked at),
picks the value with the best mean metric, then runs the study's seeds at that value. Ties
(means equal to 1e-9) go to the smallest value; when every tuning run of a group diverged or
failed, the smallest value is used and the report says so. lr-matched SGD controls
(``lr_matched = true``) are not tuned: they take the value chosen for the same run with GRAPES
(``grapes = "propagating"``), which is what the control is for (SGD at the tuned GRAPES
step, scaled by the mean initial factor); without such a run in the study they are tuned like
any other group.

Tuning runs are ordinary runs (their own keys, the same ``runs.jsonl``) marked with
``"phase": "tune"``, so a killed sweep resumes in either phase.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from typing import Any

from grapes_hw.errors import ConfigError

TUNE_KEYS = ("metric", "epochs", "train_subset", "val_fraction", "seeds")
TUNABLE: dict[str, tuple[str, tuple[str, ...]] | None] = {
    "lr": None,
    "momentum": ("optimizer", ("momentum", "nag")),
    "batch_size": None,
    "dropout": None,
    "grapes_lower": ("grapes", ("local", "propagating")),
}
"""The fields ``[tune]`` may choose: the rule's and training's hyperparameters, each with the
setting it needs to have an effect (``momentum`` only moves momentum/nag runs). The others
(dataset, model, backend, layers, seed, ...) define the question, not a knob to fit on the
validation split; ``epochs``, ``train_subset``, ``val_fraction`` and ``seeds`` set the tuning
runs themselves."""
METRICS = ("val_acc", "final_val_acc")
TIE_TOLERANCE = 1e-9


@dataclass
class TuneSpec:
    """A study's ``[tune]`` table, parsed."""

    field: str
    """The tuned TrainConfig field (e.g. ``lr``)."""
    values: list[Any]
    """The values tried, in the order given."""
    metric: str = "val_acc"
    """``val_acc``: best validation accuracy over the epochs; ``final_val_acc``: the last."""
    epochs: int | None = None
    """Epochs of a tuning run (None: the study's)."""
    train_subset: int | None = None
    """Training samples of a tuning run before the validation split (None: the study's)."""
    val_fraction: float = 0.2
    """Fraction of the tuning run's training samples held out for validation, in (0, 1)."""
    seeds: int = 1
    """Tuning seeds 0..seeds-1; the metric is their mean."""

    def overrides(self) -> dict[str, Any]:
        out: dict[str, Any] = {"val_fraction": self.val_fraction}
        if self.epochs is not None:
            out["epochs"] = self.epochs
        if self.train_subset is not None:
            out["train_subset"] = self.train_subset
        return out

    def to_dict(self) -> dict:
        return {"field": self.field, "values": self.values, "metric": self.metric,
                "epochs": self.epochs, "train_subset": self.train_subset,
                "val_fraction": self.val_fraction, "seeds": self.seeds}


def parse_tune(table: Any, prefix: str, fields: dict, coerce, base: TuneSpec | None = None
               ) -> TuneSpec:
    """``[tune]`` (or ``[quick.tune]``, which changes keys of ``base``) as a TuneSpec."""
    if not isinstance(table, dict):
        raise ConfigError(prefix, "expected a table, e.g. lr = [0.1, 0.05, 0.01] and "
                                  "metric = \"val_acc\"")
    spec = copy.deepcopy(base) if base is not None else None
    tuned = [k for k in table if k not in TUNE_KEYS]
    for k in tuned:
        if k not in fields:
            raise ConfigError(f"{prefix}.{k}", f"unknown key; allowed: {', '.join(TUNE_KEYS)} "
                                               "and one TrainConfig field with a list of values"
                                               f" ({', '.join(TUNABLE)})")
        if k not in TUNABLE:
            raise ConfigError(f"{prefix}.{k}", f"cannot be tuned (it defines the runs "
                                               "compared, not a hyperparameter); tunable fields: "
                                               f"{', '.join(TUNABLE)}")
    for k in ("epochs", "train_subset", "seeds", "val_fraction"):
        if isinstance(table.get(k), list):
            raise ConfigError(f"{prefix}.{k}", f"got a list {table[k]!r}: {k} in [tune] sets "
                                               f"the tuning runs' {k} (one number) and cannot "
                                               f"be tuned; tunable fields: {', '.join(TUNABLE)}")
    if len(tuned) > 1:
        raise ConfigError(f"{prefix}.{tuned[1]}", f"only one field can be tuned; got "
                                                   f"{', '.join(tuned)}")
    if tuned:
        name = tuned[0]
        vals = table[name]
        if not isinstance(vals, list) or not vals:
            raise ConfigError(f"{prefix}.{name}", f"expected a non-empty list of values, got "
                                                   f"{vals!r}")
        values = [coerce(name, v, f"{prefix}.{name}[{i}]") for i, v in enumerate(vals)]
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise ConfigError(f"{prefix}.{name}", "values must be distinct")
        if spec is None:
            spec = TuneSpec(field=name, values=values)
        else:
            spec.field, spec.values = name, values
    if spec is None:
        raise ConfigError(prefix, "names no field to tune: give one TrainConfig field with a "
                                  "list of values, e.g. lr = [0.1, 0.05, 0.01]")
    if "metric" in table:
        if table["metric"] not in METRICS:
            raise ConfigError(f"{prefix}.metric", f"got {table['metric']!r}; allowed values: "
                                                   f"{', '.join(METRICS)}")
        spec.metric = table["metric"]
    for k in ("epochs", "train_subset", "seeds"):
        if k in table:
            v = table[k]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{prefix}.{k}", f"got {v!r}; expected a positive integer")
            setattr(spec, k, v)
    if "val_fraction" in table:
        v = table["val_fraction"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
            raise ConfigError(f"{prefix}.val_fraction", f"got {v!r}; expected a number in "
                                                         "(0, 1): tuning needs a validation split")
        spec.val_fraction = float(v)
    return spec


# ---- choosing ---------------------------------------------------------------------------
def check_effect(spec: TuneSpec, configs, key: str) -> None:
    """Every run must be one the tuned field changes: ``momentum`` tuned for an SGD run
    would train the same network at every value and pick by noise."""
    need = TUNABLE.get(spec.field)
    if need is None:
        return
    name, allowed = need
    for cfg in configs:
        got = cfg.flat()[name]
        if got not in allowed:
            raise ConfigError(key, f"{spec.field} has no effect on runs with {name} {got!r} "
                                   f"(it acts on {name} {' or '.join(allowed)}): exclude those "
                                   f"runs or tune another field")


def run_metric(record: dict, metric: str) -> float | None:
    """A tuning run's metric; None for a run that diverged, failed or has no validation."""
    if record.get("status") != "ok":
        return None
    vals = [e.get("val_acc") for e in record.get("epochs") or []]
    if metric == "final_val_acc":
        v = vals[-1] if vals else None
        return float(v) if v is not None and math.isfinite(v) else None
    good = [float(v) for v in vals if v is not None and math.isfinite(v)]
    return max(good) if good else None


@dataclass
class Choice:
    """The value picked for one group, and the tuning curve behind it."""

    group: str
    value: Any
    curve: list[dict] = field(default_factory=list)
    """Per value: ``{"value", "metric" (mean or None), "n", "n_failed", "runs"}``."""
    note: str = ""
    linked_to: str | None = None

    def to_dict(self) -> dict:
        return {"group": self.group, "value": self.value, "curve": self.curve,
                "note": self.note, "linked_to": self.linked_to}


def choose(group: str, values: list[Any], records: dict[int, list[dict]], metric: str
           ) -> Choice:
    """Pick the best value from ``records[i]`` (the tuning runs of ``values[i]``)."""
    curve = []
    for i, v in enumerate(values):
        recs = records.get(i, [])
        ms = [run_metric(r, metric) for r in recs]
        ok = [m for m in ms if m is not None]
        curve.append({"value": v, "metric": (sum(ok) / len(ok)) if ok and len(ok) == len(ms)
                      else None, "n": len(recs), "n_failed": len(ms) - len(ok),
                      "runs": [r.get("key") for r in recs]})
    scored = [c for c in curve if c["metric"] is not None]
    if not scored:
        v = _smallest(values)
        return Choice(group, v, curve, f"every tuning run diverged or failed: the smallest "
                                       f"value ({v}) is used")
    best = max(c["metric"] for c in scored)
    tied = [c["value"] for c in scored if best - c["metric"] <= TIE_TOLERANCE]
    note = ""
    if len(tied) > 1:
        note = f"tie between {', '.join(map(str, tied))}: the smallest is used"
    failed = [str(c["value"]) for c in curve if c["metric"] is None]
    if failed:
        note = (note + "; " if note else "") + f"diverged or failed at {', '.join(failed)}"
    return Choice(group, _smallest(tied), curve, note)


def _smallest(values: list[Any]) -> Any:
    try:
        return min(values)
    except TypeError:  # values without an order: the first given
        return values[0]
