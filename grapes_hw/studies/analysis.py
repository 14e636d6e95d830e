"""The analysis behind ``grapes-hw report``: runs grouped, ordered, re-checked and flagged.

Runs are grouped by every setting that varies between them except the seed; the fields in
``METHOD_FIELDS`` make the *method* (the learning rule compared within a group), every other
varying field (device model, dataset, layers, credit rule, ...) the *context*. Groups are
ordered meaningfully, not alphabetically: float devices first, then fixed point by bits
descending (stochastic rounding before nearest), noise-free before noisy and sigmas
ascending; bp, fa, dfa; GRAPES off, local, propagating; sgd, momentum, nag, rmsprop, adam.

What the report says about a run comes from the run itself: the plateau fit is re-done from
its stored per-epoch test accuracy with today's acceptance rules
(``training.metrics.plateau_check``; the stored fit of an older version is ignored), the
pulse unit is the one the backend
declared (``pulses_unit``, inferred from the device's backend kind for older results), and
each run is flagged when it failed, diverged, stayed at chance level, wrote no pulses on a
device that should write, or has a rejected plateau fit.

Over 400 lines: grouping, ordering, re-checking and the facts a report states all read
the same run fields; split, each part would import the others.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from grapes_hw.errors import ConfigError
from grapes_hw.studies.store import (
    RUNS_FILE,
    STUDY_FILE,
    error_line,
    latest_by_key,
    read_runs,
)
from grapes_hw.training.metrics import CHANCE_MARGIN, chance_level, fit_plateau

METHOD_FIELDS = ("optimizer", "grapes", "lr", "momentum", "lr_matched", "grapes_lower",
                 "grapes_bits", "grapes_ideal_read")
"""Settings that define the learning method compared within each context."""

GRAPES_ONLY_FIELDS = ("grapes_lower", "grapes_bits", "grapes_ideal_read")
"""Method settings that mean nothing with GRAPES off (a run without GRAPES records their
defaults): left out of its label, ignored when it is chosen as a GRAPES group's baseline."""

IGNORED_FIELDS = ("seed", "data_dir", "download", "lr_effective", "lr_scale", "lr_source")
"""Settings never used for grouping (seeds are what mean/std run over)."""

DERIVED_FIELDS = ("snu", "cnn")
"""Settings a run records after resolving them from others (``config.snu``: the SNU/sSNU
parameters with the model's defaults filled in; ``config.cnn``: the CNN's resolved
architecture, which also says whether the backend ran the exact convolution kernels).
They are grouped on only where they split runs that the other settings put together (e.g. a
study varying ``extra.snu``); otherwise they only repeat the model in every row."""

FINISHED = ("ok", "diverged")
"""Statuses whose metrics enter the means (a diverged run keeps its best epoch before)."""

DATASET_CLASSES = {"digits": 10, "fashion-mnist": 10, "mnist": 10}
"""Classes per dataset, for results written before ``dataset.n_classes`` was recorded."""

PULSE_UNITS = {"float": "writes", "fixed": "cells changed",
               "analog": "estimated programming steps"}
"""The unit of ``pulses_total`` per backend kind, for results without ``pulses_unit``."""

_ORDER = {"credit": ("bp", "fa", "dfa"), "grapes": ("off", "local", "propagating"),
          "optimizer": ("sgd", "momentum", "nag", "rmsprop", "adam"),
          "model": ("mlp", "snu", "ssnu")}
_KIND_ORDER = ("float", "fixed", "analog")
_ROUNDING_ORDER = ("stochastic", "nearest")


# ---- small helpers -------------------------------------------------------------------------
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


def disp(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "-".join(disp(x) for x in v)
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return str(v)


def natural(s: str) -> list:
    return [(0, float(t), "") if re.fullmatch(r"\d+(\.\d+)?", t) else (1, 0.0, t)
            for t in re.findall(r"\d+(?:\.\d+)?|\D+", s)]


def fnum(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def mean_std(values: list[Any]) -> tuple[float, float, int]:
    """Mean and sample std (ddof=1; nan for a single value) over the finite values."""
    a = np.array([v for v in (fnum(x) for x in values) if math.isfinite(v)], dtype=float)
    if a.size == 0:
        return math.nan, math.nan, 0
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else math.nan, int(a.size)


def flat_config(cfg: dict) -> dict:
    """A run's config with ``extra`` tables flattened to dotted ``extra.*`` names."""
    out: dict[str, Any] = {}

    def walk(v: Any, prefix: str) -> None:
        if isinstance(v, dict) and v:
            for k, x in v.items():
                walk(x, f"{prefix}.{k}")
        else:
            out[prefix] = v

    for k, v in cfg.items():
        if k == "extra" and isinstance(v, dict):
            if v:
                walk(v, "extra")
        else:
            out[k] = v
    return out


def run_fields(run: dict) -> dict[str, str]:
    flat = flat_config(run.get("config") or {})
    return {k: disp(v) for k, v in flat.items() if k not in IGNORED_FIELDS}


# ---- devices -------------------------------------------------------------------------------
def device_kind(run: dict) -> str:
    return str((run.get("device_model") or {}).get("backend") or "?")


def device_bits(run: dict) -> float | None:
    params = (run.get("device_model") or {}).get("params") or {}
    bits = params.get("bits")
    return float(bits) if isinstance(bits, (int, float)) and not isinstance(bits, bool) else None


def device_noise(run: dict) -> tuple[float, float]:
    """(read_sigma, write_sigma) of the run's device model; 0 where it has no noise."""
    noise = (run.get("device_model") or {}).get("noise") or {}
    return (fnum(noise.get("read_sigma") or 0.0), fnum(noise.get("write_sigma") or 0.0))


def other_noise(run: dict) -> bool:
    """Whether the device has noise besides read/write sigma (programming, stuck cells)."""
    noise = (run.get("device_model") or {}).get("noise") or {}
    return bool(fnum(noise.get("program_sigma") or 0) or fnum(noise.get("stuck_fraction") or 0))


def is_float_device(run: dict) -> bool:
    return device_kind(run) == "float"


def device_sort_key(run: dict) -> tuple:
    """Float first, then fixed point by bits descending (stochastic before nearest rounding),
    then analog; noise-free first, then each noise kind by sigma ascending."""
    dm = run.get("device_model") or {}
    kind = device_kind(run)
    params = dm.get("params") or {}
    bits = device_bits(run)
    if bits is None and kind == "float":
        bits = fnum(re.sub(r"\D", "", str(params.get("dtype", ""))) or "nan")
    rounding = str(params.get("rounding", ""))
    noise = dm.get("noise") or {}
    noise_key = tuple((k, float(v)) for k, v in sorted(noise.items())
                      if isinstance(v, (int, float)) and not isinstance(v, bool) and v)
    return (_KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER),
            -bits if bits is not None and math.isfinite(bits) else 0.0,
            _ROUNDING_ORDER.index(rounding) if rounding in _ROUNDING_ORDER else 9,
            len(noise_key), noise_key, natural(str(dm.get("name", ""))))


def pulses_unit(run: dict) -> str:
    """The unit of ``pulses_total``: as recorded, else from the backend kind (+ the bias)."""
    if run.get("pulses_unit"):
        return str(run["pulses_unit"])
    unit = PULSE_UNITS.get(device_kind(run), "unknown")
    if (run.get("config") or {}).get("bias"):
        unit += " + writes (bias)"
    return unit


def should_write(run: dict) -> bool:
    """Devices whose training must change stored cells: fixed point, and analog tiles that
    are pulsed and counted (not inference or floating-point tiles, not ``count_pulses``
    off)."""
    kind = device_kind(run)
    if kind == "fixed":
        return True
    if kind == "analog":
        params = (run.get("device_model") or {}).get("params") or {}
        rpu = str(params.get("rpu_config", ""))
        return bool(params.get("count_pulses", True)) and not (
            "Inference" in rpu or "FloatingPoint" in rpu)
    return False


def n_classes(run: dict) -> int | None:
    ds = run.get("dataset") or {}
    if isinstance(ds.get("n_classes"), int):
        return int(ds["n_classes"])
    return DATASET_CLASSES.get(str(ds.get("name") or (run.get("config") or {}).get("dataset")))


# ---- per-run re-check and flags ------------------------------------------------------------
def test_curve(run: dict) -> list[float]:
    return [e["test_acc"] for e in run.get("epochs") or [] if e.get("test_acc") is not None]


def recheck(run: dict) -> dict:
    """A copy of ``run`` with the plateau fit re-done under today's rules (``slowness`` None
    when rejected), ``pulses_unit`` filled in, ``final_test_acc`` None for a diverged run
    (its weights are not finite at the end; older records held the last finite epoch's
    accuracy) and ``flags``: a list of ``(flag, detail)``."""
    r = dict(run)
    r["pulses_unit"] = pulses_unit(run)
    if run.get("status") == "diverged":
        r["final_test_acc"] = None
    curve = test_curve(run)
    nc = n_classes(run)
    if run.get("status") in FINISHED:
        fit = fit_plateau(curve, n_classes=nc)
        r["plateau_fit"], r["slowness"] = fit, (fit["slowness"] if fit["ok"] else None)
    else:
        r["plateau_fit"], r["slowness"] = None, None
    flags: list[tuple[str, str]] = []
    status = run.get("status")
    if status == "error":
        flags.append(("error", error_line(run)[:200]))
    elif status == "diverged":
        flags.append(("diverged", f"diverged in epoch {run.get('diverged_epoch')}"))
    elif status != "ok":
        flags.append((str(status), f"status {status}"))
    best = fnum(run.get("best_test_acc"))
    if status in FINISHED and nc is not None and math.isfinite(best) \
            and best <= chance_level(nc):
        flags.append(("chance", f"best test accuracy {best:.4f} <= {chance_level(nc):.2f} "
                                f"(chance 1/{nc} + {CHANCE_MARGIN:g})"))
    if status in FINISHED and should_write(run) and run.get("epochs") \
            and fnum(run.get("pulses_total")) == 0:
        flags.append(("zero pulses", f"0 {r['pulses_unit']} on a {device_kind(run)} device "
                                     f"in {len(run['epochs'])} epochs"))
    if r["plateau_fit"] is not None and not r["plateau_fit"]["ok"]:
        flags.append(("fit rejected", r["plateau_fit"]["reason"]))
    r["flags"] = flags
    return r


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
        return [v for v in (fnum(r.get(metric)) for r in self.finished()) if math.isfinite(v)]

    def flagged(self, flag: str | None = None) -> list[dict]:
        return [r for r in self.runs
                if (r["flags"] if flag is None else any(f == flag for f, _ in r["flags"]))]


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
    tune_runs: list[dict] = field(default_factory=list)
    """Tuning runs (``phase == "tune"``) of a study with ``[tune]``; not in ``runs``."""
    tuned: str | None = None
    """The field tuning chose per group (left out of the grouping, shown as a column)."""
    _group_of: dict[int, Group] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._group_of = {id(r): g for g in self.groups for r in g.runs}

    def method_label(self, g: Group) -> str:
        return self.label_of(g.method)

    def label_of(self, method: tuple) -> str:
        """The method's label; an optimizer shared by all runs is named too (``sgd +
        GRAPES (propagating)``, not ``GRAPES (propagating)``)."""
        m = dict(zip(self.method_fields, method, strict=True))
        if m and "optimizer" not in m and "optimizer" in self.fixed:
            m = {"optimizer": self.fixed["optimizer"], **m}
        return method_label(m)

    def context_label(self, g: Group) -> str:
        return context_label(self, g.context)

    def contexts(self) -> list[tuple]:
        return list(dict.fromkeys(g.context for g in self.groups))

    def methods(self) -> list[tuple]:
        """Methods in their meaningful order (sgd before momentum, GRAPES off before on)."""
        return sorted(dict.fromkeys(g.method for g in self.groups),
                      key=lambda m: [_field_key(f, v, None)
                                     for f, v in zip(self.method_fields, m, strict=True)])

    def group_of(self, run: dict) -> Group:
        return self._group_of[id(run)]


def context_label(an: Analysis, ctx: tuple) -> str:
    pairs = zip(an.context_fields, ctx, strict=True)
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
    skip = ("optimizer", "grapes", "lr_matched", *(GRAPES_ONLY_FIELDS if grapes == "off" else ()))
    rest = [f"{k}={v}" for k, v in m.items() if k not in skip]
    return ", ".join(p for p in [head, *rest] if p)


def _field_key(name: str, value: str, device: dict | None) -> tuple:
    if name == "backend" and device is not None:
        return (0, device_sort_key(device))
    order = _ORDER.get(name, ())
    return (1, (order.index(value) if value in order else len(order), natural(value)))


def analyse(runs: list[dict], study: dict | None = None,
            warnings: list[str] | None = None, tune_runs: list[dict] | None = None,
            tuned: str | None = None) -> Analysis:
    runs = [recheck(r) for r in runs]
    fields_per_run = [{k: v for k, v in run_fields(r).items() if k != tuned} for r in runs]
    names = list(dict.fromkeys(k for f in fields_per_run for k in f))
    varying = [k for k in names if len({f.get(k, "none") for f in fields_per_run}) > 1]
    for k in DERIVED_FIELDS:
        if k in varying:
            others = [o for o in varying if o != k]
            seen: dict[tuple, str] = {}
            if all(seen.setdefault(tuple(f.get(o, "none") for o in others), f.get(k, "none"))
                   == f.get(k, "none") for f in fields_per_run):
                varying.remove(k)  # determined by the other settings
                names.remove(k)  # and not the same for all runs: not a fixed setting
    fixed = {k: fields_per_run[0].get(k, "none") for k in names if k not in varying} \
        if fields_per_run else {}
    method_fields = [k for k in METHOD_FIELDS if k in varying]
    context_fields = [k for k in varying if k not in method_fields]
    group_fields = context_fields + method_fields
    by_key: dict[tuple, Group] = {}
    device_of: dict[str, dict] = {}
    for r, f in zip(runs, fields_per_run, strict=True):
        vals = tuple(f.get(k, "none") for k in group_fields)
        g = by_key.get(vals)
        if g is None:
            g = by_key[vals] = Group(dict(zip(group_fields, vals, strict=True)))
            g.context = vals[:len(context_fields)]
            g.method = vals[len(context_fields):]
        g.runs.append(r)
        if r.get("device_model"):
            device_of.setdefault(f.get("backend", ""), r)

    def key(g: Group) -> list:
        return [_field_key(k, v, device_of.get(v)) for k, v in g.values.items()]

    groups = sorted(by_key.values(), key=key)
    return Analysis(runs, groups, group_fields, method_fields, context_fields, fixed, study,
                    list(warnings or []), list(tune_runs or []), tuned)


def _study_problem(study: Any, records: list[dict]) -> str:
    """What makes ``study`` (a study.json) not the plan of these runs ("" when it is):
    not the shape ``sweep`` writes, or the plan of another study (none of its runs here)."""
    if not isinstance(study, dict):
        return "not a study description (a JSON object)"
    for k in ("name", "description", "question"):
        if study.get(k) is not None and not isinstance(study[k], str):
            return f"{k!r} is not a string"
    if study.get("tune") is not None and not isinstance(study["tune"], dict):
        return "'tune' is not a table"
    runs = study.get("runs")
    if runs is not None and not (isinstance(runs, list) and all(
            isinstance(r, dict) and isinstance(r.get("key"), str) for r in runs)):
        return "'runs' is not a list of planned runs with keys"
    if runs and records and not {r["key"] for r in runs} & {r["key"] for r in records}:
        return (f"it plans {len(runs)} runs ({study.get('name')!r}), none of them among the "
                f"{len(records)} results here: another study's plan, or one changed since "
                "these runs")
    return ""


def load(dir_: str | Path) -> Analysis:
    d = Path(dir_)
    if not d.is_dir():
        raise ConfigError("DIR", f"not a directory: {d}")
    path = d / RUNS_FILE
    if not path.is_file():
        raise ConfigError("DIR", f"no {RUNS_FILE} in {d}; run 'grapes-hw sweep' first")
    records, warnings = read_runs(path)
    every = list(latest_by_key(records).values())
    runs = [r for r in every if r.get("phase") != "tune"]
    tune_runs = [r for r in every if r.get("phase") == "tune"]
    if not every:
        raise ConfigError("DIR", f"{path} holds no results yet")
    study = None
    sp = d / STUDY_FILE
    if sp.is_file():
        try:
            study = json.loads(sp.read_text())
        except ValueError:
            warnings.append(f"{sp}: not valid JSON; ignored")
        problem = _study_problem(study, every) if study is not None else ""
        if problem:
            warnings.append(f"{sp}: {problem}; ignored (the report uses the runs alone)")
            study = None
    tuned = ((study or {}).get("tune") or {}).get("field") if tune_runs or (
        (study or {}).get("tune")) else None
    if tuned and study and isinstance(study.get("runs"), list):
        # a run at a value the tuning no longer chooses (its grid or data changed since) is
        # superseded: pooled with the run at the new choice, it made a mean of two settings
        planned = {r["key"] for r in study["runs"]}
        old = [r for r in runs if r["key"] not in planned]
        if old:
            runs = [r for r in runs if r["key"] in planned]
            warnings.append(f"{len(old)} result{'s' * (len(old) != 1)} at a {tuned} the tuning "
                            "no longer chooses (the study or its tuning changed since) "
                            f"{'are' if len(old) != 1 else 'is'} left out of every table "
                            "(kept in runs.jsonl)")
    if tune_runs and not runs:
        warnings.append(f"only tuning runs have finished ({len(tune_runs)}); the study's runs "
                        "at the tuned values have not started")
    warnings += stale_devices(every)
    an = analyse(runs, study, warnings, tune_runs, tuned)
    if tuned:
        for g in an.groups:
            vals = sorted({disp((r.get("config") or {}).get(tuned)) for r in g.finished()
                           if not (r.get("config") or {}).get("lr_matched")})
            if len(vals) > 1:
                an.warnings.append(f"{an.context_label(g)}, {an.method_label(g)}: its runs are at "
                                f"{len(vals)} values of the tuned {tuned} ({', '.join(vals)}), "
                                "i.e. from before and after a tuning choice changed; they "
                                "are pooled in its row")
    return an


def stale_devices(records: list[dict]) -> list[str]:
    """Warnings for records made with another version of their device model than the one
    ``device_models/`` (or the model file) holds now: the sweep reruns such runs, so a report
    read before it has should not pass them off as current."""
    from grapes_hw.backends.registry import load_device_model
    from grapes_hw.studies.keys import device_difference

    by_backend: dict[str, list[dict]] = {}
    for r in records:
        backend = (r.get("config") or {}).get("backend")
        if r.get("device_model") and isinstance(backend, str):
            by_backend.setdefault(backend, []).append(r)
    out = []
    for backend, rs in by_backend.items():
        try:
            current = load_device_model(backend).to_dict()
        except ConfigError:
            out.append(f"device model {backend!r} cannot be loaded here, so its {len(rs)} "
                       "runs were not checked against its current version")
            continue
        diffs = [d for r in rs if (d := device_difference(r["device_model"], current))]
        if diffs:
            out.append(f"{len(diffs)} of the {len(rs)} runs on {backend} were made with another "
                       f"version of that device model than the current one ({diffs[0]}); "
                       "rerun the sweep to redo them")
    return out


# ---- what ran ------------------------------------------------------------------------------
def network_of(run: dict) -> str:
    """e.g. ``MLP 784-256-256-256-10``; the input width is recovered from the weight count
    (``?`` where that does not come out whole)."""
    cfg = run.get("config") or {}
    hidden = [int(x) for x in cfg.get("layers") or []]
    n_out = n_classes(run)
    cnn = cfg.get("cnn")
    if isinstance(cnn, dict) and cnn.get("conv"):  # the conv stack is recorded as it ran
        shape = "x".join(str(v) for v in cnn.get("input_shape") or []) or "?"
        convs = str(cnn["conv"]).split(",")
        pools = list(cnn.get("pools") or [])
        k = cnn.get("pool_size", "?")
        if len(set(pools)) == 1 and len(pools) == len(convs) and pools[0]:
            stack = f"conv {','.join(convs)} (each + {k}x{k} {pools[0]} pool)"
        else:
            stack = "conv " + ", ".join(
                c + (f" + {k}x{k} {pools[i]} pool" if i < len(pools) and pools[i] else "")
                for i, c in enumerate(convs))
        if cnn.get("padding") not in (None, "same"):
            stack += f", padding {cnn['padding']}"
        dense = "-".join(str(v) for v in [cnn.get("dense_in", "?"), *hidden, n_out or "?"])
        return f"CNN {shape}, {stack}, dense {dense}" + (" +bias" if cfg.get("bias") else "")
    n_w = (run.get("memory") or {}).get("n_weights")
    n_in = None
    if hidden and n_out and isinstance(n_w, int):
        inner = sum(a * b for a, b in zip(hidden, hidden[1:], strict=False)) + hidden[-1] * n_out
        q, rem = divmod(n_w - inner, hidden[0])
        n_in = q if rem == 0 and q > 0 else None
    sizes = [n_in or "?", *hidden, n_out or "?"]
    model = str(cfg.get("model") or "mlp").upper()
    return f"{model} " + "-".join(str(v) for v in sizes) + (" +bias" if cfg.get("bias") else "")


def dataset_of(run: dict) -> str:
    ds = run.get("dataset") or {}
    name = ds.get("name") or (run.get("config") or {}).get("dataset") or "?"
    if ds.get("n_train") is None:
        return str(name)
    return f"{name} ({ds['n_train']} train, {ds.get('n_test', '?')} test samples)"


def ranges(values: list[int]) -> str:
    """[0, 1, 2, 4] -> '0-2, 4'."""
    vs = sorted(set(values))
    out: list[str] = []
    i = 0
    while i < len(vs):
        j = i
        while j + 1 < len(vs) and vs[j + 1] == vs[j] + 1:
            j += 1
        out.append(f"{vs[i]}" if i == j else f"{vs[i]}-{vs[j]}")
        i = j + 1
    return ", ".join(out)


@dataclass
class Facts:
    """What ran, read from the runs (never from the study's description)."""

    datasets: list[str]
    networks: list[str]
    epochs: list[int]
    """Epochs configured."""
    epochs_run: tuple[int, int]
    """Fewest and most complete epochs a finished run has."""
    seeds: list[int]
    n_per_cell: tuple[int, int]
    """Fewest and most finished runs of a group."""
    n_groups: int

    def epochs_text(self) -> str:
        want = ranges(self.epochs)
        lo, hi = self.epochs_run
        if len(self.epochs) == 1 and lo == hi == self.epochs[0]:
            return f"{want} epochs"
        return f"{want} epochs configured, {lo}-{hi} run" if lo != hi else \
            f"{want} epochs configured, {lo} run"

    def seeds_text(self) -> str:
        return f"seed {self.seeds[0]}" if len(self.seeds) == 1 else \
            f"seeds {ranges(self.seeds)}"

    def n_text(self) -> str:
        lo, hi = self.n_per_cell
        return f"{lo}" if lo == hi else f"{lo}-{hi}"

    def _parts(self) -> tuple[str, str]:
        # (one name once: a study may train some runs on a subset of the same dataset)
        ds = " / ".join(dict.fromkeys(d.split(" (")[0] for d in self.datasets))
        nets = " / ".join(self.networks)
        if len(self.networks) > 3:  # a study of architectures: they are on the axis
            kinds = dict.fromkeys(n.split(" ")[0] for n in self.networks)
            nets = f"{len(self.networks)} {'/'.join(kinds)} networks"
        return ds, nets

    def line(self) -> str:
        """One line for plot titles: dataset, network, epochs, seeds."""
        ds, nets = self._parts()
        return f"{ds}, {nets}, {self.epochs_text()}, {self.seeds_text()}"

    def title_lines(self, width: int = 95) -> str:
        """``line()``, or where longer than ``width`` characters the networks on a line of
        their own (a CNN's conv stack is long)."""
        if len(self.line()) <= width:
            return self.line()
        ds, nets = self._parts()
        return f"{ds}, {self.epochs_text()}, {self.seeds_text()}\n{nets}"


def facts(an: Analysis) -> Facts:
    fin = [r for r in an.runs if r.get("status") in FINISHED] or an.runs
    cfgs = [r.get("config") or {} for r in an.runs]
    epochs = sorted({int(c["epochs"]) for c in cfgs if isinstance(c.get("epochs"), int)})
    done = [sum(1 for e in r.get("epochs") or [] if not e.get("partial")) for r in fin]
    seeds = sorted({int(c["seed"]) for c in cfgs if isinstance(c.get("seed"), int)})
    per_cell = [len(g.finished()) for g in an.groups]
    return Facts(datasets=list(dict.fromkeys(dataset_of(r) for r in fin)),
                 networks=list(dict.fromkeys(network_of(r) for r in fin)),
                 epochs=epochs, epochs_run=(min(done, default=0), max(done, default=0)),
                 seeds=seeds, n_per_cell=(min(per_cell, default=0), max(per_cell, default=0)),
                 n_groups=len(an.groups))
