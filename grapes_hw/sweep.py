"""Studies: resumable sweeps of training runs over a grid of settings.

A study TOML (see ``studies/README.md``) fixes a ``[base]`` configuration (``TrainConfig``
fields), crosses ``[axes]``, ``[zip.*]`` groups and ``[[variants]]``, drops ``[[exclude]]``
matches and has a ``[quick]`` table for a minutes-long variant. ``load_study`` expands and
validates every run before anything trains; ``run_sweep`` trains the runs not yet done, in local
worker processes or on a Dask cluster, and appends each finished run to ``DIR/runs.jsonl``.

``runs.jsonl`` holds one JSON object per line: the result of :func:`grapes_hw.train.run` plus
``key`` (the run's stable key: a hash of its resolved configuration), or, for a run that raised,
``status`` "error" with the traceback in ``error``. Only the parent process writes it, each line
with one ``os.write`` of the whole line on an ``O_APPEND`` descriptor followed by ``fsync``, so a
killed sweep leaves at most one torn last line; on start that line is cut off and its run redone.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import hashlib
import itertools
import json
import os
import socket
import sys
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import tomllib

from .config import _coerce, to_dict
from .errors import ConfigError

RUNS_FILE = "runs.jsonl"
STUDY_FILE = "study.json"
LOCK_FILE = ".sweep.lock"

KEY_EXCLUDED_FIELDS = ("data_dir", "download")
"""Fields that do not change what a run computes, left out of its key."""

MAX_WORKER_DEATHS = 3
"""A run whose worker process died this many times is recorded as an error."""

CRASH_ONCE_ENV = "GRAPES_HW_SWEEP_CRASH_ONCE"
"""Test hook: a marker file path; the first run to create it kills its worker (os._exit)."""

_TOP_KEYS = ("study", "base", "axes", "zip", "variants", "exclude", "quick", "tune")
_STUDY_KEYS = ("name", "description", "question", "seeds", "requires")
_QUICK_TABLES = ("seeds", "axes", "zip", "variants", "exclude", "tune")


# ---- TrainConfig fields -------------------------------------------------------------------
def _train_fields() -> dict[str, Any]:
    from .train import TrainConfig

    hints = get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig) if f.init}


def _is_optional(tp: Any) -> bool:
    return type(None) in get_args(tp)


def _is_sequence_type(tp: Any) -> bool:
    args = [a for a in get_args(tp) if a is not type(None)] if _is_optional(tp) else [tp]
    return any(get_origin(a) in (list, tuple) for a in args)


def _coerce_field(name: str, value: Any, key: str, fields: dict[str, Any]) -> Any:
    """A study value as the type of TrainConfig field (or ``extra.*`` path) ``name``."""
    if name.startswith("extra."):
        return copy.deepcopy(value)
    if name == "extra":
        if not isinstance(value, dict):
            raise ConfigError(key, f"got {value!r}; expected a table")
        return copy.deepcopy(value)
    tp = fields[name]
    # TOML has no null: the string "none" stands for None where a field allows it.
    if _is_optional(tp) and isinstance(value, str) and value.lower() == "none" \
            and str not in get_args(tp):
        return None
    out = _coerce(value, tp, key)
    if isinstance(out, list) and get_origin(tp) is tuple:
        out = tuple(out)
    return out


def _check_name(name: str, key: str, fields: dict[str, Any]) -> None:
    if name.startswith("extra."):
        if len(name) <= len("extra.") or "" in name.split("."):
            raise ConfigError(key, "expected extra.SECTION.OPTION")
        return
    if name not in fields:
        raise ConfigError(key, "unknown key; allowed: TrainConfig fields "
                               f"({', '.join(sorted(fields))}) or extra.SECTION.OPTION")


def _flatten_extra(table: Any, prefix: str) -> dict[str, Any]:
    """``{"a": {"b": [..]}}`` under ``extra`` -> ``{"extra.a.b": [..]}`` (leaves kept)."""
    out: dict[str, Any] = {}
    if isinstance(table, dict) and table:
        for k, v in table.items():
            out.update(_flatten_extra(v, f"{prefix}.{k}"))
    else:
        out[prefix] = table
    return out


def _expand_extra_keys(table: dict) -> dict:
    """Axes/exclude tables: nested ``extra`` tables become dotted ``extra.*`` names."""
    out = {}
    for k, v in table.items():
        if k == "extra" and isinstance(v, dict):
            out.update(_flatten_extra(v, "extra"))
        else:
            out[k] = v
    return out


def _set_path(cfg: dict, name: str, value: Any) -> None:
    if not name.startswith("extra."):
        cfg[name] = value
        return
    parts = name.split(".")[1:]
    d = cfg.setdefault("extra", {})
    for p in parts[:-1]:
        nxt = d.get(p)
        if not isinstance(nxt, dict):
            nxt = d[p] = {}
        d = nxt
    d[parts[-1]] = copy.deepcopy(value)


def _get_path(cfg: dict, name: str) -> Any:
    if not name.startswith("extra."):
        return cfg.get(name)
    d: Any = cfg.get("extra", {})
    for p in name.split(".")[1:]:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def _canon(v: Any) -> str:
    return json.dumps(to_dict(v), sort_keys=True, separators=(",", ":"))


# ---- study model ---------------------------------------------------------------------------
@dataclass
class Axis:
    """One dimension of the grid: a list of points, each setting one or more fields."""

    source: str
    """Where it was declared (``axes.lr``, ``zip.opt``, ``variants``, ``study.seeds``)."""
    points: list[dict[str, Any]]
    """Each point: field name (or ``extra.*`` path) -> value."""


@dataclass
class RunSpec:
    """One run of a study: its key, resolved configuration and the grid values that chose it."""

    key: str
    config: Any
    """The TrainConfig."""
    label: dict[str, Any]
    """The settings that differ between runs of the study (for display and grouping)."""
    phase: str = "study"
    """``study`` (a run of the study proper) or ``tune`` (a tuning run, see tune.py)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Tuning runs: ``tune_group`` and ``tune_value``, recorded with the result."""

    def config_dict(self) -> dict:
        return config_to_dict(self.config)


@dataclass
class Study:
    name: str
    description: str
    question: str
    path: str
    quick: bool
    requires: list[str]
    runs: list[RunSpec] = field(default_factory=list)
    """The study's runs; with ``tune``, templates whose tuned field is set by tuning."""
    duplicates: int = 0
    tune: Any = None
    """The ``[tune]`` table (``grapes_hw.tune.TuneSpec``) or None."""


def config_to_dict(cfg) -> dict:
    d = to_dict(cfg)
    d["layers"] = [int(v) for v in cfg.layers]
    return d


def _defaults() -> dict:
    from .train import TrainConfig

    return config_to_dict(TrainConfig())


LEGACY_KEY_DEFAULTS: dict[str, Any] = {"lr": 0.1}
"""Values left out of a run's key although they are no longer ``TrainConfig`` defaults: the
learning rate was 0.1 for every optimizer when the committed results were run, and keys of
runs at that value must stay what they were. ``lr`` enters the key resolved (an unset lr is
its optimizer's default), so two runs that train at different rates never share a key."""


def _resolved_lr(d: dict) -> Any:
    lr = d.get("lr")
    if lr is None:
        from .config import default_lr

        lr = default_lr(d.get("optimizer", "sgd"))
    return lr


def is_device_path(backend: Any) -> bool:
    """A ``backend`` value naming a TOML file (rather than a shipped model name)."""
    return isinstance(backend, str) and (backend.endswith(".toml") or os.sep in backend
                                         or "/" in backend)


def device_content(model_dict: dict) -> dict:
    """What of a device model changes what a run computes: its backend kind, parameters and
    noise (not its name, description, citation or the file it came from)."""
    return {k: model_dict.get(k) for k in ("backend", "params", "noise")}


def device_digest(backend: str) -> str:
    """SHA-256 (16 hex digits) of the resolved content of a device model."""
    from .devices import load_device_model

    model = load_device_model(backend, option="backend")
    return hashlib.sha256(_canon(device_content(model.to_dict())).encode()).hexdigest()[:16]


def key_fields(cfg) -> dict:
    """The part of a config that identifies a run: every field that differs from the
    TrainConfig default, without ``KEY_EXCLUDED_FIELDS``. Leaving defaults out keeps keys
    (and so finished runs) valid when a new field with a neutral default is added.

    A device model given as a file enters by its content (``{"device": digest}``), so an
    edited file gives new keys and the same file elsewhere the same keys; a shipped model by
    its name (the keys of committed results), its content being checked against the device
    model recorded with each result (:func:`stale_reason`)."""
    d = config_to_dict(cfg) if not isinstance(cfg, dict) else dict(cfg)
    if "lr" in d or "optimizer" in d:
        d["lr"] = _resolved_lr(d)
    defaults = _defaults()
    out = {}
    for k, v in d.items():
        if k in KEY_EXCLUDED_FIELDS or k in ("lr_effective", "lr_scale", "lr_source"):
            continue
        if k in LEGACY_KEY_DEFAULTS and _canon(LEGACY_KEY_DEFAULTS[k]) == _canon(v):
            continue
        if k in defaults and _canon(defaults[k]) == _canon(v):
            continue
        if k == "backend" and is_device_path(v):
            v = {"device": device_digest(v)}
        out[k] = v
    return out


def run_key(cfg) -> str:
    """Stable key of a run: SHA-256 (16 hex digits) of ``key_fields(cfg)``, sorted keys.

    Independent of how the study declared the run (axis order, zip or variants).
    """
    return hashlib.sha256(_canon(key_fields(cfg)).encode()).hexdigest()[:16]


def same_config(stored: dict, planned: dict) -> bool:
    """A finished run's recorded config agrees with the planned one on every common field
    (guards against a changed TrainConfig default reusing an old result)."""
    return _config_difference(stored, planned) is None


def _config_difference(stored: dict, planned: dict) -> str | None:
    for k, v in planned.items():
        if k in KEY_EXCLUDED_FIELDS or k not in stored:
            continue
        if k == "backend" and is_device_path(v):
            continue  # a file's content is compared through the recorded device model
        was = stored[k]
        if k == "lr":  # an unset lr is its optimizer's default, on either side
            v, was = _resolved_lr(planned), _resolved_lr(stored)
        if _canon(was) != _canon(v):
            return f"config {k}: recorded {_canon(was)}, planned {_canon(v)}"
    return None


def _flat_items(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat_items(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def device_difference(recorded: dict | None, current: dict) -> str | None:
    """How the device model a result was run on differs from the current one (None: it does
    not). Compared on the fields both have, so a parameter added later with a neutral
    default does not make old results stale."""
    if not recorded:
        return None
    ra, rb = device_content(recorded), device_content(current)
    diffs = [f"{k} {_canon(ra[k])} -> {_canon(rb[k])}" for k in ra
             if (ra[k] is None) != (rb[k] is None) or not isinstance(ra[k], dict)
             and _canon(ra[k]) != _canon(rb[k])]
    a = _flat_items({k: v for k, v in ra.items() if isinstance(v, dict) and rb[k] is not None})
    b = _flat_items({k: v for k, v in rb.items() if isinstance(v, dict) and ra[k] is not None})
    diffs += [f"{k} {_canon(a[k])} -> {_canon(b[k])}" for k in sorted(set(a) & set(b))
             if _canon(a[k]) != _canon(b[k])]
    return "; ".join(diffs) if diffs else None


def stale_reason(record: dict, spec: RunSpec, models: dict[str, dict]) -> str | None:
    """Why a finished run's record cannot stand for the planned run (None: it can)."""
    planned = spec.config_dict()
    diff = _config_difference(record.get("config") or {}, planned)
    if diff:
        return diff
    if not record.get("device_model"):  # an error record: nothing ran on a device
        return None
    backend = planned.get("backend")
    current = models.get(backend)
    if current is None:
        from .devices import load_device_model

        current = models[backend] = load_device_model(backend, option="backend").to_dict()
    dev = device_difference(record.get("device_model"), current)
    if dev:
        return f"device model {backend} changed: {dev}"
    return None


def _parse_axes_table(table: Any, prefix: str, fields: dict) -> list[Axis]:
    if not isinstance(table, dict):
        raise ConfigError(prefix, f"expected a table of lists, got {table!r}")
    axes = []
    for name, values in _expand_extra_keys(table).items():
        key = f"{prefix}.{name}"
        _check_name(name, key, fields)
        if not isinstance(values, list):
            raise ConfigError(key, f"expected a list of values, got {values!r}")
        if not values:
            raise ConfigError(key, "empty list: the grid would have no runs")
        axes.append(Axis(key, [{name: _coerce_field(name, v, f"{key}[{i}]", fields)}
                               for i, v in enumerate(values)]))
    return axes


def _parse_zip(table: Any, prefix: str, fields: dict) -> list[Axis]:
    if not isinstance(table, dict):
        raise ConfigError(prefix, f"expected tables [{prefix}.NAME] of equal-length lists")
    out = []
    for group, cols in table.items():
        gkey = f"{prefix}.{group}"
        if not isinstance(cols, dict) or not cols:
            raise ConfigError(gkey, "expected a table of equal-length lists, e.g. "
                                    "optimizer = [\"sgd\", \"momentum\"], lr = [0.1, 0.01]")
        cols = _expand_extra_keys(cols)
        n = None
        for name, values in cols.items():
            key = f"{gkey}.{name}"
            _check_name(name, key, fields)
            if not isinstance(values, list):
                raise ConfigError(key, f"expected a list of values, got {values!r}")
            if not values:
                raise ConfigError(key, "empty list: the grid would have no runs")
            if n is not None and len(values) != n:
                raise ConfigError(key, f"has {len(values)} values but the other lists of "
                                       f"{gkey} have {n}; zipped lists must be equally long")
            n = len(values)
        points = [{name: _coerce_field(name, values[i], f"{gkey}.{name}[{i}]", fields)
                   for name, values in cols.items()} for i in range(n or 0)]
        out.append(Axis(gkey, points))
    return out


def _parse_variants(items: Any, prefix: str, fields: dict) -> Axis:
    if not isinstance(items, list):
        raise ConfigError(prefix, "expected an array of tables [[variants]]")
    if not items:
        raise ConfigError(prefix, "empty list: the grid would have no runs")
    points = []
    for i, item in enumerate(items):
        key = f"{prefix}[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(key, f"expected a table, got {item!r}")
        point = {}
        for name, v in _expand_extra_keys(item).items():
            _check_name(name, f"{key}.{name}", fields)
            point[name] = _coerce_field(name, v, f"{key}.{name}", fields)
        points.append(point)
    return Axis(prefix, points)


def _parse_exclude(items: Any, prefix: str, fields: dict) -> list[dict[str, list]]:
    """Each rule: field -> list of values; a run matching every field of a rule is dropped."""
    if not isinstance(items, list):
        raise ConfigError(prefix, "expected an array of tables [[exclude]]")
    rules = []
    for i, item in enumerate(items):
        key = f"{prefix}[{i}]"
        if not isinstance(item, dict) or not item:
            raise ConfigError(key, f"expected a non-empty table, got {item!r}")
        rule = {}
        for name, v in _expand_extra_keys(item).items():
            k = f"{key}.{name}"
            _check_name(name, k, fields)
            # A list means "any of these"; for list-typed fields (layers) a list of lists.
            seq = not name.startswith("extra.") and _is_sequence_type(fields[name])
            many = isinstance(v, list) and (not seq or (v and isinstance(v[0], list)))
            vals = v if many else [v]
            rule[name] = [_canon(_coerce_field(name, x, f"{k}[{j}]" if many else k, fields))
                          for j, x in enumerate(vals)]
        rules.append(rule)
    return rules


def _parse_seeds(v: Any, key: str) -> Axis:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(key, f"got {v!r}; expected a positive integer (seeds 0..N-1)")
    return Axis(key, [{"seed": s} for s in range(v)])


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("study", f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError("study", f"cannot read {path}: {e.strerror or e}") from None


def studies_dir() -> Path:
    """The shipped ``studies/`` folder (``$GRAPES_HW_STUDIES`` overrides)."""
    env = os.environ.get("GRAPES_HW_STUDIES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "studies"


def resolve_study_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.is_file():
        return p
    if os.sep not in name_or_path and p.suffix != ".toml":
        cand = studies_dir() / f"{name_or_path}.toml"
        if cand.is_file():
            return cand
    shipped = ", ".join(sorted(s.stem for s in studies_dir().glob("*.toml")))
    raise ConfigError("study", f"study file not found: {name_or_path}"
                               + (f" (shipped studies: {shipped})" if shipped else ""))


def load_study(path: str | Path, quick: bool = False, *, check_backends: bool = True) -> Study:
    """Parse, expand and validate a study file; raises ConfigError naming the bad key."""
    path = resolve_study_path(str(path))
    raw = _read_toml(path)
    return study_from_dict(raw, quick=quick, path=str(path), default_name=path.stem,
                           check_backends=check_backends)


def study_from_dict(raw: dict, *, quick: bool = False, path: str = "<dict>",
                    default_name: str = "study", check_backends: bool = True) -> Study:
    from .train import TrainConfig

    fields = _train_fields()
    unknown = sorted(set(raw) - set(_TOP_KEYS))
    if unknown:
        raise ConfigError(unknown[0], f"unknown key; allowed top-level keys/tables: "
                                      f"{', '.join(_TOP_KEYS)}")
    meta = raw.get("study", {})
    if not isinstance(meta, dict):
        raise ConfigError("study", "expected a table [study]")
    for k in meta:
        if k not in _STUDY_KEYS:
            raise ConfigError(f"study.{k}", f"unknown key; allowed: {', '.join(_STUDY_KEYS)}")
    for k in ("name", "description", "question"):
        if k in meta and not isinstance(meta[k], str):
            raise ConfigError(f"study.{k}", f"expected a string, got {meta[k]!r}")
    requires = meta.get("requires", [])
    if not (isinstance(requires, list) and all(isinstance(r, str) for r in requires)):
        raise ConfigError("study.requires", f"expected a list of strings, got {requires!r}")

    # base: fixed settings
    base_raw = raw.get("base", {})
    if not isinstance(base_raw, dict):
        raise ConfigError("base", "expected a table [base] of TrainConfig fields")
    base: dict[str, Any] = {}
    source: dict[str, str] = {}
    for name, v in base_raw.items():
        _check_name(name, f"base.{name}", fields)
        base[name] = _coerce_field(name, v, f"base.{name}", fields)
        source[name] = f"base.{name}"

    axes: dict[str, Axis] = {}
    for a in _parse_axes_table(raw.get("axes", {}), "axes", fields):
        axes[a.source] = a
    for a in _parse_zip(raw.get("zip", {}), "zip", fields):
        axes[a.source] = a
    if "variants" in raw:
        axes["variants"] = _parse_variants(raw["variants"], "variants", fields)
    if "seeds" in meta:
        if "axes.seed" in axes:
            raise ConfigError("study.seeds", "give either study.seeds or axes.seed, not both")
        axes["seed"] = _parse_seeds(meta["seeds"], "study.seeds")
    exclude = _parse_exclude(raw.get("exclude", []), "exclude", fields)
    tune = None
    if "tune" in raw:
        from .tune import parse_tune

        tune = parse_tune(raw["tune"], "tune", fields,
                          lambda n, v, k: _coerce_field(n, v, k, fields))

    # quick: parsed (and so checked) always, applied with quick=True
    q = raw.get("quick", {})
    if not isinstance(q, dict):
        raise ConfigError("quick", "expected a table [quick]")
    pins: dict[str, Any] = {}
    q_axes: dict[str, Axis] = {}
    q_variants = q_exclude = q_seeds = q_tune = None
    for name, v in q.items():
        key = f"quick.{name}"
        if name == "seeds":
            q_seeds = _parse_seeds(v, key)
        elif name == "axes":
            q_axes.update({a.source[len("quick."):]: a for a in _parse_axes_table(v, key, fields)})
        elif name == "zip":
            q_axes.update({a.source[len("quick."):]: a for a in _parse_zip(v, key, fields)})
        elif name == "variants":
            q_variants = _parse_variants(v, key, fields)
        elif name == "exclude":
            q_exclude = _parse_exclude(v, key, fields)
        elif name == "tune":
            if tune is None:
                raise ConfigError(key, "the study has no [tune] table to change")
            from .tune import parse_tune

            q_tune = parse_tune(v, key, fields, lambda n, v, k: _coerce_field(n, v, k, fields),
                                base=tune)
        elif name == "extra" and isinstance(v, dict):
            for n2, v2 in _flatten_extra(v, "extra").items():
                pins[n2] = copy.deepcopy(v2)
        else:
            if name not in fields and not name.startswith("extra."):
                raise ConfigError(key, "unknown key; allowed: TrainConfig fields (pinned for "
                                       f"the quick variant) or {', '.join(_QUICK_TABLES)}")
            _check_name(name, key, fields)
            pins[name] = _coerce_field(name, v, key, fields)

    if quick:
        for k, a in q_axes.items():
            axes[k] = a
        if q_variants is not None:
            axes["variants"] = q_variants
        if q_exclude is not None:
            exclude = q_exclude
        if q_seeds is not None:
            axes.pop("axes.seed", None)
            axes["seed"] = q_seeds
        if q_tune is not None:
            tune = q_tune
        for name, v in pins.items():
            base[name] = v
            source[name] = f"quick.{name}"
            for a in axes.values():
                for p in a.points:
                    p.pop(name, None)

    # Grid: seeds outermost, so that the first seed of every group finishes first.
    ordered = [axes.pop("seed")] if "seed" in axes else []
    ordered += [axes.pop("axes.seed")] if "axes.seed" in axes else []
    ordered += list(axes.values())
    for a in ordered:
        if not a.points:
            raise ConfigError(a.source, "empty list: the grid would have no runs")
        uniq = {_canon(p): p for p in a.points}  # points a quick pin made equal
        a.points = list(uniq.values())

    if tune is not None:
        for a in ordered:
            if any(tune.field in p for p in a.points):
                raise ConfigError(f"{a.source}", f"sets {tune.field!r}, the field [tune] "
                                                 "chooses: remove it from the grid")
    field_source: dict[str, str] = dict(source)  # which study key set each field
    for a in ordered:
        for p in a.points:
            for name in p:
                field_source[name] = a.source

    resolved: list[dict] = []
    for combo in itertools.product(*[a.points for a in ordered]):
        cfg: dict[str, Any] = {}
        for name, v in base.items():
            if name.startswith("extra."):
                continue
            cfg[name] = copy.deepcopy(v)
        for name, v in base.items():
            if name.startswith("extra."):
                _set_path(cfg, name, v)
        for point in combo:
            for name, v in point.items():
                _set_path(cfg, name, v)
        if quick:
            for name, v in pins.items():
                _set_path(cfg, name, v)
        if any(all(_canon(_get_path(cfg, n)) in vals for n, vals in rule.items())
               for rule in exclude):
            continue
        resolved.append(cfg)
    if not resolved:
        raise ConfigError("exclude" if exclude else "axes",
                          "every run of the grid is excluded: the study has no runs")

    specs: list[RunSpec] = []
    seen: set[str] = set()
    dups = 0
    backends_checked: set[str] = set()
    base_dir = Path(path).resolve().parent if path != "<dict>" else None
    for cfg_d in resolved:
        b = cfg_d.get("backend")
        if base_dir is not None and is_device_path(b) and not Path(b).is_absolute():
            cfg_d["backend"] = str(base_dir / b)  # relative to the study file, not the cwd
        try:
            cfg = TrainConfig(**cfg_d)
            cfg.check()
        except ConfigError as e:
            name = e.field.lstrip("-").replace("-", "_")
            key = field_source.get(name, "study")
            raise ConfigError(key, f"{e.message} (in run {_short(cfg_d, base)})") from None
        except TypeError as e:  # pragma: no cover - a field the dataclass refuses
            raise ConfigError("study", str(e)) from None
        if check_backends and cfg.backend not in backends_checked:
            from .devices import load_device_model

            load_device_model(cfg.backend, option=field_source.get("backend", "base.backend"))
            backends_checked.add(cfg.backend)
        k = run_key(cfg)
        if k in seen:
            dups += 1
            continue
        seen.add(k)
        specs.append(RunSpec(k, cfg, {}))

    # Labels: the settings that differ between runs.
    dicts = [config_to_dict(s.config) for s in specs]
    flat = [_flat_config(d) for d in dicts]
    varying = [n for n in flat[0] if len({_canon(f.get(n)) for f in flat}) > 1] if flat else []
    for s, f in zip(specs, flat, strict=False):
        s.label = {n: f.get(n) for n in varying}
    return Study(name=meta.get("name", default_name), description=meta.get("description", ""),
                 question=meta.get("question", ""), path=path, quick=quick,
                 requires=list(requires), runs=specs, duplicates=dups, tune=tune)


# ---- tuning: the two phases of a study with [tune] ------------------------------------------
def tune_group(spec: RunSpec, tune) -> str:
    """The tuning group of a study run: a hash of its key fields without seed and the tuned
    field (runs differing only in those share the tuned value)."""
    kf = key_fields(spec.config)
    kf.pop("seed", None)
    kf.pop(tune.field, None)
    return hashlib.sha256(_canon(kf).encode()).hexdigest()[:12]


def _group_label(spec: RunSpec, tune) -> dict:
    return {k: v for k, v in spec.label.items() if k not in ("seed", tune.field)}


def _linked_target(spec: RunSpec, tune, groups: dict[str, RunSpec]) -> str | None:
    """The group an lr-matched control takes its tuned value from (see tune.py)."""
    cfg = spec.config
    if tune.field != "lr" or not cfg.lr_matched:
        return None
    target = RunSpec("", dataclasses.replace(cfg, lr_matched=False, grapes="propagating"), {})
    gid = tune_group(target, tune)
    return gid if gid in groups else None


def tuning_plan(study: Study) -> tuple[dict[str, RunSpec], dict[str, str], list[RunSpec]]:
    """``(groups, links, tuning runs)``: one template per group (its first run), the linked
    lr-matched groups (group -> the group whose value it takes) and every tuning run."""
    tune = study.tune
    groups: dict[str, RunSpec] = {}
    for s in study.runs:
        groups.setdefault(tune_group(s, tune), s)
    links = {g: t for g, s in groups.items()
             if (t := _linked_target(s, tune, groups)) is not None}
    runs: list[RunSpec] = []
    seen: set[str] = set()
    for seed in range(tune.seeds):  # seeds outermost, as in the study
        for gid, s in groups.items():
            if gid in links:
                continue
            for i, v in enumerate(tune.values):
                cfg = dataclasses.replace(s.config, seed=seed, **{tune.field: v},
                                          **tune.overrides())
                try:
                    cfg.check()
                except ConfigError as e:
                    raise ConfigError(f"tune.{e.field.lstrip('-').replace('-', '_')}",
                                      f"{e.message} (tuning run of "
                                      f"{label_text(_group_label(s, tune)) or 'base'})") from None
                k = run_key(cfg)
                if k in seen:
                    continue
                seen.add(k)
                label = {**_group_label(s, tune), tune.field: v, "seed": seed}
                runs.append(RunSpec(k, cfg, label, phase="tune",
                                    meta={"tune_group": gid, "tune_value": v,
                                          "tune_index": i}))
    return groups, links, runs


def tuning_choices(study: Study, done: dict[str, dict]) -> tuple[dict, list[RunSpec]]:
    """The value chosen per group from the finished tuning runs in ``done`` (groups whose
    tuning is incomplete are left out), and the tuning runs still to do."""
    from .tune import Choice, choose

    groups, links, runs = tuning_plan(study)
    by_group: dict[str, dict[int, list[dict]]] = {}
    missing: list[RunSpec] = []
    for r in runs:
        rec = done.get(r.key)
        if rec is None:
            missing.append(r)
            continue
        by_group.setdefault(r.meta["tune_group"], {}).setdefault(
            r.meta["tune_index"], []).append(rec)
    incomplete = {r.meta["tune_group"] for r in missing}
    choices: dict[str, Choice] = {}
    for gid in groups:
        if gid in links or gid in incomplete:
            continue
        choices[gid] = choose(gid, study.tune.values, by_group.get(gid, {}),
                              study.tune.metric)
    for gid, target in links.items():
        if target in choices:
            c = choices[target]
            choices[gid] = Choice(gid, c.value, [], "lr-matched control: the value tuned for "
                                                    "SGD + GRAPES (propagating)", linked_to=target)
    return choices, missing


def final_runs(study: Study, choices: dict) -> tuple[list[RunSpec], int]:
    """The study's runs at their groups' chosen values (groups not yet tuned left out), and
    how many runs still wait for tuning."""
    out: list[RunSpec] = []
    waiting = 0
    for s in study.runs:
        gid = tune_group(s, study.tune)
        c = choices.get(gid)
        if c is None:
            waiting += 1
            continue
        cfg = dataclasses.replace(s.config, **{study.tune.field: c.value})
        cfg.check()
        out.append(RunSpec(run_key(cfg), cfg, dict(s.label), meta={"tune_group": gid}))
    return out, waiting


def tuning_report(study: Study, choices: dict) -> dict:
    """``tuning.json``: the [tune] table and, per group, its settings, curve and choice."""
    groups, links, _ = tuning_plan(study)
    return {"tune": study.tune.to_dict(),
            "groups": [{"group": gid, "label": _group_label(s, study.tune),
                        **(choices[gid].to_dict() if gid in choices else
                           {"value": None, "note": "tuning not finished"})}
                       for gid, s in groups.items()]}


def _flat_config(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if k == "extra" and isinstance(v, dict):
            out.update(_flatten_extra(v, "extra") if v else {})
        else:
            out[k] = v
    return out


def _short(cfg_d: dict, base: dict) -> str:
    parts = [f"{k}={v}" for k, v in cfg_d.items() if k not in base or base[k] != v]
    return ", ".join(parts) or "base"


def label_text(label: dict) -> str:
    return " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
                    for k, v in label.items())


# ---- runs.jsonl ----------------------------------------------------------------------------
def read_runs(path: str | Path, *, repair: bool = False) -> tuple[list[dict], list[str]]:
    """Parse runs.jsonl; returns (records, warnings).

    A torn or invalid tail (a line without its newline, or complete lines at the end that do
    not parse as a result) is ignored, and with ``repair`` cut off so the next append starts on
    a fresh line. Invalid lines in the middle are skipped with a warning.
    """
    path = Path(path)
    warnings: list[str] = []
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], warnings
    records: list[dict] = []
    good_end = 0      # byte offset just after the last valid line
    pos = 0
    bad_pending: list[int] = []
    lineno = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        lineno += 1
        if nl < 0:
            bad_pending.append(lineno)
            warnings.append(f"{path}: line {lineno} is torn (no newline); ignored")
            break
        line = data[pos:nl]
        pos = nl + 1
        if not line.strip():
            continue
        rec = _parse_line(line)
        if rec is None:
            bad_pending.append(lineno)
            warnings.append(f"{path}: line {lineno} is not a valid result; ignored")
            continue
        records.append(rec)
        good_end = pos
        bad_pending.clear()
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
        warnings.append(f"{path}: cut {len(data) - good_end} bytes of torn/invalid tail")
    return records, warnings


def _parse_line(line: bytes) -> dict | None:
    try:
        rec = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("key"), str) or "status" not in rec:
        return None
    return rec


def latest_by_key(records: list[dict]) -> dict[str, dict]:
    """The last record of each key (a rerun error replaced by its later result)."""
    out: dict[str, dict] = {}
    for r in records:
        out.pop(r["key"], None)
        out[r["key"]] = r
    return out


def append_record(path: str | Path, record: dict) -> None:
    """Append one line atomically: a single write of the whole line on O_APPEND, then fsync."""
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        n = os.write(fd, line)
        while n < len(line):  # only on a full disk or similar; the reader drops a torn tail
            n += os.write(fd, line[n:])
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---- one run, in a worker ------------------------------------------------------------------
def run_one(config: dict, key: str, threads: int | None = None) -> dict:
    """Train one configuration (in a worker process); never raises for a failing run."""
    marker = os.environ.get(CRASH_ONCE_ENV)
    if marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.write(fd, f"{os.getpid()} {key}\n".encode())
            os.close(fd)
            os._exit(77)
    t0 = time.time()
    try:
        from .train import TrainConfig, run

        if threads:
            _limit_threads(int(threads))
        cfg = TrainConfig(**{**config, "layers": tuple(config["layers"])})
        result = run(cfg)
    except Exception as e:  # noqa: BLE001 - a failing run is recorded, the sweep goes on
        rec = error_record(key, config, traceback.format_exc(), type(e).__name__,
                           seconds=time.time() - t0)
    else:
        rec = {"key": key, **result}
    rec["worker"] = {"host": socket.gethostname(), "pid": os.getpid(), "started": t0,
                     "finished": time.time(), "threads": threads}
    return rec


def _limit_threads(n: int) -> None:
    """``n`` torch threads per worker: with several workers per machine, pools sized to all
    cores in every worker fight each other (spin-waiting OpenMP threads made runs several
    times slower). The numba kernels left (the fixed-point write) are serial."""
    import torch

    torch.set_num_threads(n)


def error_record(key: str, config: dict, text: str, kind: str = "Error",
                 seconds: float = 0.0) -> dict:
    return {"key": key, "status": "error", "error": text, "error_type": kind,
            "config": config, "epochs": [], "best_test_acc": None, "final_test_acc": None,
            "slowness": None, "seconds_total": seconds}


# ---- executors -----------------------------------------------------------------------------
Submit = Callable[[dict], None]


def _run_local(specs: list[RunSpec], workers: int, threads: int | None,
               on_result: Submit) -> None:
    """ProcessPoolExecutor; a broken pool (a worker died) is rebuilt and its runs resubmitted."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("forkserver")
    # Imported once in the fork server, so each worker forks ready to train.
    ctx.set_forkserver_preload(["grapes_hw.train", "grapes_hw.sweep", "grapes_hw.data",
                                "sklearn.datasets", "sklearn.model_selection"])
    pending = deque(specs)
    deaths: Counter[str] = Counter()
    inflight: dict = {}

    def new_pool():
        # The fork server outlives a sweep (one per process), so the test hook's variable is
        # handed to each new worker rather than inherited from whenever the server started.
        return ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                   initializer=_worker_env,
                                   initargs=({CRASH_ONCE_ENV: os.environ.get(CRASH_ONCE_ENV)},))

    pool = new_pool()
    try:
        while pending or inflight:
            # At most `workers` runs in flight, so every in-flight run is really running.
            while pending and len(inflight) < workers:
                s = pending.popleft()
                inflight[pool.submit(run_one, s.config_dict(), s.key, threads)] = s
            done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            broken = False
            for f in done:
                s = inflight.pop(f)
                try:
                    on_result(f.result())
                except BrokenProcessPool:
                    broken = True
                    _requeue(s, deaths, pending, on_result)
                except Exception:  # noqa: BLE001 - e.g. a result that cannot be pickled
                    on_result(error_record(s.key, s.config_dict(), traceback.format_exc(),
                                           "WorkerError"))
            if broken:
                for f, s in list(inflight.items()):
                    if f.done() and not f.cancelled() and f.exception() is None:
                        on_result(f.result())
                    else:
                        _requeue(s, deaths, pending, on_result)
                inflight.clear()
                _discard_broken_pool(pool)
                pool = new_pool()
    finally:
        pool.shutdown(wait=not inflight, cancel_futures=True)


def _worker_env(env: dict[str, str | None]) -> None:
    """Worker initializer: set (or clear) these environment variables."""
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _discard_broken_pool(pool) -> None:
    """Shut down a pool one of whose workers died, killing the survivors first.

    CPython 3.11's executor does not always terminate the surviving workers of a broken pool:
    seen here, a survivor stayed blocked reading the call queue while ``shutdown(wait=True)``
    joined it forever (a hung sweep, and a hung test under load). Their runs have already
    been requeued, so nothing is lost by killing them."""
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            if p.is_alive():
                p.kill()
        except (OSError, ValueError):  # already reaped or closed
            pass
    pool.shutdown(wait=True, cancel_futures=True)


def _requeue(s: RunSpec, deaths: Counter, pending: deque, on_result: Submit) -> None:
    deaths[s.key] += 1
    if deaths[s.key] >= MAX_WORKER_DEATHS:
        on_result(error_record(s.key, s.config_dict(),
                               f"the worker process running this run died "
                               f"{deaths[s.key]} times", "WorkerDied"))
    else:
        pending.appendleft(s)


def _run_dask(specs: list[RunSpec], client, on_result: Submit) -> None:
    """Submit every run to a Dask cluster; a worker that dies has its run rescheduled."""
    from distributed import as_completed

    token = hashlib.sha256(f"{os.getpid()} {time.time()}".encode()).hexdigest()[:8]
    futures = {}
    for s in specs:
        f = client.submit(run_one, s.config_dict(), s.key, 1, key=f"grapes-run-{s.key}-{token}",
                          pure=False, retries=2)
        futures[f] = s
    for f in as_completed(list(futures)):
        s = futures.pop(f)
        try:
            res = f.result()
        except Exception as e:  # noqa: BLE001 - KilledWorker (died too often), lost data
            res = error_record(s.key, s.config_dict(), "".join(
                traceback.format_exception_only(type(e), e)), type(e).__name__)
        on_result(res)
        f.release()


# ---- the sweep -----------------------------------------------------------------------------
@dataclass
class SweepSummary:
    out: str
    total: int
    skipped: int
    ran: int
    statuses: Counter = field(default_factory=Counter)
    seconds: float = 0.0


class _Lock:
    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self.fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise ConfigError("--out", f"another sweep is writing {self.path.parent}") \
                    from None
            raise
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)


def default_out(study: Study) -> str:
    return str(Path("sweeps") / (study.name + ("-quick" if study.quick else "")))


def check_done(specs: list[RunSpec], done: dict[str, dict], models: dict[str, dict],
               retry_errors: bool = False) -> tuple[list[RunSpec], dict[str, str]]:
    """``(todo, stale)``: the runs of ``specs`` without a usable result, and for each stale
    one (a result recorded with another configuration or device model) the reason."""
    todo: list[RunSpec] = []
    stale: dict[str, str] = {}
    for s in specs:
        rec = done.get(s.key)
        if rec is None:
            todo.append(s)
            continue
        why = stale_reason(rec, s, models)
        if why:
            stale[s.key] = why
            todo.append(s)
        elif retry_errors and rec.get("status") == "error":
            todo.append(s)
    return todo, stale


def _study_json(study: Study, runs: list[RunSpec]) -> dict:
    return {"name": study.name, "description": study.description, "question": study.question,
            "path": study.path, "quick": study.quick, "requires": study.requires,
            "tune": study.tune.to_dict() if study.tune is not None else None,
            "runs": [{"key": s.key, "label": s.label, "config": s.config_dict(),
                      "phase": s.phase} for s in runs]}


def run_sweep(study: Study | str | Path, *, out: str | None = None, workers: int = 2,
              scheduler: str | None = None, dask_local: int | None = None, quick: bool = False,
              retry_errors: bool = False, threads: int | None = None, quiet: bool = False,
              log: Callable[[str], None] | None = None) -> SweepSummary:
    """Run the study's missing runs; returns counts. See the module docstring. A study with
    ``[tune]`` runs in two phases: the tuning runs, then the study's runs at the chosen
    values (``tuning.json`` records the choices); both resume from ``runs.jsonl``."""
    if not isinstance(study, Study):
        study = load_study(study, quick=quick)
    log = log or (lambda s: print(s, flush=True))
    out_dir = Path(out or default_out(study))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError("--out", f"cannot create {out_dir}: {e.strerror or e}") from None
    if not os.access(out_dir, os.W_OK):
        raise ConfigError("--out", f"directory is not writable: {out_dir}")
    runs_path = out_dir / RUNS_FILE
    t0 = time.time()
    models: dict[str, dict] = {}
    backend = (f"Dask scheduler {scheduler}" if scheduler else
               f"Dask LocalCluster, {dask_local} workers" if dask_local else
               f"{workers} local worker process{'es' if workers > 1 else ''}")
    with _Lock(out_dir / LOCK_FILE):
        records, warnings = read_runs(runs_path, repair=True)
        for w in warnings:
            log(f"warning: {w}")
        done = latest_by_key(records)
        summary = SweepSummary(str(out_dir), 0, 0, 0)

        def execute(specs: list[RunSpec], what: str) -> None:
            todo, stale = check_done(specs, done, models, retry_errors)
            for k, why in stale.items():
                log(f"warning: the recorded result of {k} is stale ({why}); running it again")
            skipped = len(specs) - len(todo)
            summary.total += len(specs)
            summary.skipped += skipped
            for s in specs:
                if s not in todo:
                    summary.statuses[done[s.key].get("status", "?")] += 1
            if not quiet:
                log(f"study {study.name}{' (quick)' if study.quick else ''}{what}: "
                    f"{len(specs)} runs, {skipped} already done, {len(todo)} to run on "
                    f"{backend} -> {runs_path}")
            if todo:
                _execute(study, todo, len(specs), skipped, done, summary, runs_path, log,
                         quiet, scheduler, dask_local, workers, threads)

        if study.tune is None:
            write_json_atomic(out_dir / STUDY_FILE, _study_json(study, study.runs))
            execute(study.runs, "")
        else:
            _, _, tune_runs = tuning_plan(study)
            write_json_atomic(out_dir / STUDY_FILE, _study_json(study, tune_runs))
            execute(tune_runs, f", tuning {study.tune.field}")
            choices, missing = tuning_choices(study, done)
            write_json_atomic(out_dir / TUNING_FILE, tuning_report(study, choices))
            finals, waiting = final_runs(study, choices)
            write_json_atomic(out_dir / STUDY_FILE, _study_json(study, tune_runs + finals))
            if waiting:  # tuning runs in error (a finished sweep always has every choice)
                log(f"warning: {waiting} runs wait for tuning runs that did not finish "
                    f"({len(missing)} missing)")
            for c in choices.values():
                if c.note and not quiet:
                    log(f"tuning {c.group}: {study.tune.field} = {c.value} ({c.note})")
            execute(finals, f", at the tuned {study.tune.field}")
    summary.seconds = time.time() - t0
    return summary


TUNING_FILE = "tuning.json"


def _execute(study: Study, todo: list[RunSpec], n_total: int, skipped: int,
             done: dict[str, dict], summary: SweepSummary, runs_path: Path, log, quiet: bool,
             scheduler, dask_local, workers: int, threads) -> None:
    """Train ``todo`` on the chosen executor, appending each result to ``runs_path`` (and to
    ``done``) as it arrives."""
    from tqdm import tqdm

    bar = tqdm(total=n_total, initial=skipped, unit="run", desc=study.name,
               disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True)
    by_key = {s.key: s for s in todo}
    finished: set[str] = set()
    ran = [0]

    def on_result(res: dict) -> None:
        k = res.get("key")
        if k not in by_key or k in finished:
            return
        if res.get("status") == "interrupted":  # Ctrl-C in a worker: not a result
            return
        spec = by_key[k]
        if spec.phase != "study":
            res = {**res, "phase": spec.phase, **spec.meta}
        append_record(runs_path, res)
        done[k] = res
        finished.add(k)
        ran[0] += 1
        summary.ran += 1
        summary.statuses[res.get("status", "?")] += 1
        bar.update(1)
        if not quiet:
            acc = res.get("best_test_acc") if spec.phase == "study" else max(
                (e["val_acc"] for e in res.get("epochs") or [] if e.get("val_acc") is not None),
                default=None)
            what = "best" if spec.phase == "study" else "val"
            msg = (f"[{skipped + ran[0]}/{n_total}] {res.get('status'):8s} {what} "
                   f"{acc if acc is not None else float('nan'):.4f}  {label_text(spec.label)}")
            if res.get("status") == "error":
                last = (res.get("error") or "").strip().splitlines()[-1:] or [""]
                msg += f"  ({last[0]})"
            if bar.disable:
                log(msg)
            else:
                bar.write(msg)

    try:
        if scheduler or dask_local:
            _with_dask(todo, scheduler, dask_local, on_result)
        else:
            n_threads = threads if threads is not None else (1 if workers > 1 else None)
            _run_local(todo, workers, n_threads, on_result)
    finally:
        bar.close()


def _with_dask(todo: list[RunSpec], scheduler: str | None, dask_local: int | None,
               on_result: Submit) -> None:
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover
        raise ConfigError("--scheduler" if scheduler else "--dask-local",
                          "needs dask[distributed] (pip install 'dask[distributed]')") from None
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as e:
            raise ConfigError("--scheduler", f"cannot connect to {scheduler}: {e}") from None
        with client:
            _run_dask(todo, client, on_result)
        return
    with LocalCluster(n_workers=dask_local, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=40) as cluster, \
            Client(cluster) as client:
        _run_dask(todo, client, on_result)


# ---- CLI -----------------------------------------------------------------------------------
def add_cli(sub) -> None:
    from .argtypes import positive_int

    p = sub.add_parser("sweep", help="run a study (a grid of runs), resumable, in parallel")
    p.add_argument("study", help="study TOML file, or the name of one in studies/")
    p.add_argument("--workers", type=positive_int, default=2,
                   help="local worker processes (default 2)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on this Dask distributed scheduler (e.g. tcp://host:8786)")
    g.add_argument("--dask-local", type=positive_int, default=None, metavar="N",
                   help="run on a local Dask cluster of N worker processes")
    p.add_argument("--out", default=None,
                   help="results folder (default sweeps/NAME, sweeps/NAME-quick with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="the study's [quick] variant (small data, few epochs, minutes)")
    p.add_argument("--retry-errors", action="store_true",
                   help="rerun runs recorded with status error")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-run lines")
    p.set_defaults(func=cmd_sweep)


def dry_run(study: Study, out: str | None, log: Callable[[str], None] = print) -> int:
    """List the study's runs with their state in ``out``: done, to run, or stale (and why);
    with ``[tune]``, the tuning runs, then the runs at the values tuned so far."""
    out_dir = Path(out or default_out(study))
    records, warnings = read_runs(out_dir / RUNS_FILE)
    for w in warnings:
        log(f"warning: {w}")
    done = latest_by_key(records)
    models: dict[str, dict] = {}
    counts: Counter[str] = Counter()

    def show(specs: list[RunSpec], title: str | None) -> None:
        if title:
            log(title)
        todo, stale = check_done(specs, done, models)
        todo_keys = {s.key for s in todo}
        for s in specs:
            if s.key in stale:
                state = f"stale: {stale[s.key]}"
                counts["stale"] += 1
            elif s.key in todo_keys:
                state = "to run"
                counts["to run"] += 1
            else:
                state = f"done ({done[s.key].get('status')})"
                counts["done"] += 1
            log(f"{s.key}  {state:<10}  {label_text(s.label)}")

    if study.tune is None:
        show(study.runs, None)
    else:
        _, _, tune_runs = tuning_plan(study)
        show(tune_runs, f"tuning runs ({study.tune.field} in {study.tune.values}, "
                        f"metric {study.tune.metric}):")
        choices, _ = tuning_choices(study, done)
        finals, waiting = final_runs(study, choices)
        show(finals, "runs at the tuned values:" if finals else None)
        if waiting:
            counts["wait for tuning"] += waiting
            log(f"{waiting} runs wait for their group's tuning")
    parts = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    log(f"{sum(counts.values())} runs ({parts}) in {out_dir}"
        + (f"; {study.duplicates} duplicate configurations merged" if study.duplicates else ""))
    return 0


def cmd_sweep(args) -> int:
    study = load_study(args.study, quick=args.quick)
    if args.dry_run:
        return dry_run(study, args.out)
    summary = run_sweep(study, out=args.out, workers=args.workers, scheduler=args.scheduler,
                        dask_local=args.dask_local, retry_errors=args.retry_errors,
                        quiet=args.quiet)
    st = ", ".join(f"{n} {k}" for k, n in sorted(summary.statuses.items()))
    print(f"done: {summary.total} runs ({st}); ran {summary.ran} now in {summary.seconds:.1f}s"
          f" -> {Path(summary.out) / RUNS_FILE}")
    if summary.statuses.get("error"):
        print(f"grapes-hw sweep: {summary.statuses['error']} run(s) failed with an error; "
              "see 'error' in runs.jsonl, rerun them with --retry-errors", file=sys.stderr)
        return 1
    return 0
