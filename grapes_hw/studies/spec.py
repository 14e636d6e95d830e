"""The study schema: a TOML grid (``[study]``, ``[base]``, ``[axes]``, ``[zip]``,
``[[variants]]``, ``[[exclude]]``, ``[quick]``, ``[tune]``) parsed into ``RunSpec``s with
strict checks naming the key.

Over 400 lines on purpose: one grammar, its parser and its error messages together.
"""

from __future__ import annotations

import copy
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin

import tomllib

from grapes_hw.config import _coerce
from grapes_hw.errors import ConfigError
from grapes_hw.studies.keys import _canon, config_to_dict, is_device_path, run_key

_TOP_KEYS = ("study", "base", "axes", "zip", "variants", "exclude", "quick", "tune")
_STUDY_KEYS = ("name", "description", "question", "seeds", "requires")
_QUICK_TABLES = ("seeds", "axes", "zip", "variants", "exclude", "tune")


# ---- TrainConfig fields -------------------------------------------------------------------
def _train_fields() -> dict[str, Any]:
    from grapes_hw.training.config import TrainConfig

    return TrainConfig.field_types()


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
    """The ``[tune]`` table (``grapes_hw.studies.tune.TuneSpec``) or None."""


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
            if isinstance(v, list) and not v:
                raise ConfigError(k, "empty list: the rule would match no run")
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
    except UnicodeDecodeError as e:
        raise ConfigError("study", f"{path}: not UTF-8 text (byte {e.start}); TOML files "
                                   "are UTF-8") from None
    except OSError as e:
        raise ConfigError("study", f"cannot read {path}: {e.strerror or e}") from None


def studies_dir() -> Path:
    """The shipped ``studies/`` folder (``$GRAPES_HW_STUDIES`` overrides)."""
    env = os.environ.get("GRAPES_HW_STUDIES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "studies"  # beside the package


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
    from grapes_hw.training.config import TrainConfig

    fields = _train_fields()
    unknown = sorted(set(raw) - set(_TOP_KEYS))
    if unknown:
        raise ConfigError(unknown[0], f"unknown key; allowed top-level keys/tables: "
                                      f"{', '.join(_TOP_KEYS)}")
    if not raw:
        raise ConfigError("study", f"{path} is empty: a study needs at least a [base] table "
                                   "(see studies/README.md)")
    if quick and not raw.get("quick"):
        raise ConfigError("--quick", f"{path} has no (or an empty) [quick] table: the quick "
                                     "variant would be the full study; run without --quick")
    meta = raw.get("study", {})
    if not isinstance(meta, dict):
        raise ConfigError("study", "expected a table [study]")
    for k in meta:
        if k not in _STUDY_KEYS:
            raise ConfigError(f"study.{k}", f"unknown key; allowed: {', '.join(_STUDY_KEYS)}")
    for k in ("name", "description", "question"):
        if k in meta and not isinstance(meta[k], str):
            raise ConfigError(f"study.{k}", f"expected a string, got {meta[k]!r}")
    name = meta.get("name", default_name)
    # the name is the default results folder (sweeps/NAME): no path, no "." or ".."
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or ".." in name:
        raise ConfigError("study.name", f"got {name!r}; use letters, digits, '.', '_' and "
                                        "'-' (it names the results folder sweeps/NAME)")
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
        from grapes_hw.studies.tune import parse_tune

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
            from grapes_hw.studies.tune import parse_tune

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
        for name, src in source.items():
            if name == tune.field:
                raise ConfigError(src, f"sets {tune.field!r}, the field [tune] chooses: "
                                       "remove it (it would be overridden)")
        for a in ordered:
            if any(tune.field in p for p in a.points):
                raise ConfigError(f"{a.source}", f"sets {tune.field!r}, the field [tune] "
                                                 "chooses: remove it from the grid")
    field_source: dict[str, str] = dict(source)  # which study key set each field
    axis_of: dict[str, str] = {}
    for a in ordered:
        for name in dict.fromkeys(n for p in a.points for n in p):
            if name in axis_of:  # the later axis would override the earlier in every run
                raise ConfigError(a.source, f"sets {name!r}, which {axis_of[name]} also "
                                            "sets: one would override the other (runs merged "
                                            "as duplicates); set it in one place, or drop "
                                            "combinations with [[exclude]]")
            axis_of[name] = a.source
            field_source[name] = a.source

    resolved: list[dict] = []
    matched = [False] * len(exclude)
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
        hits = [all(_canon(_get_path(cfg, n)) in vals for n, vals in rule.items())
                for rule in exclude]
        for i, hit in enumerate(hits):
            matched[i] = matched[i] or hit
        if any(hits):
            continue
        resolved.append(cfg)
    if not resolved:
        raise ConfigError("exclude" if exclude else "axes",
                          "every run of the grid is excluded: the study has no runs")
    # A rule that drops nothing: a typo, or a stale rule. (A rule of the full grid may match
    # nothing in the smaller quick grid: checked only where it was written for the grid.)
    for i, hit in enumerate(matched):
        if not hit and (not quick or q_exclude is not None):
            raise ConfigError(f"{'quick.' if quick and q_exclude is not None else ''}"
                              f"exclude[{i}]", "matches no run of the grid (check its "
                                               "fields and values)")

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
            cfg = TrainConfig.from_flat(**cfg_d)
            cfg.check()
        except ConfigError as e:
            name = e.field.lstrip("-").replace("-", "_")
            key = field_source.get(name) or next(  # extra.snu -> the key of extra.snu.decay
                (v for k, v in field_source.items()
                 if k.startswith(name + ".") or name.startswith(k + ".")), "study")
            raise ConfigError(key, f"{e.message} (in run {_short(cfg_d, base)})") from None
        except TypeError as e:  # pragma: no cover - a field the dataclass refuses
            raise ConfigError("study", str(e)) from None
        if check_backends and cfg.device.backend not in backends_checked:
            from grapes_hw.backends.registry import load_device_model

            load_device_model(cfg.device.backend, option=field_source.get("backend",
                                                                          "base.backend"))
            backends_checked.add(cfg.device.backend)
        k = run_key(cfg)
        if k in seen:
            dups += 1
            continue
        seen.add(k)
        specs.append(RunSpec(k, cfg, {}))

    if tune is not None:
        from grapes_hw.studies.tune import check_effect

        tkey = "quick.tune" if quick and q_tune else "tune"
        check_effect(tune, [s.config for s in specs], tkey)
        for s in specs:  # the tuning runs' split (a subset, a validation fraction)
            try:
                s.config.replace(**tune.overrides()).data.check()
            except ConfigError as e:
                raise ConfigError(f"{tkey}.{e.field}" if e.field in tune.overrides()
                                  else field_source.get(e.field, tkey),
                                  f"{e.message} (in the tuning runs)") from None

    # Labels: the settings that differ between runs.
    dicts = [config_to_dict(s.config) for s in specs]
    flat = [_flat_config(d) for d in dicts]
    varying = [n for n in flat[0] if len({_canon(f.get(n)) for f in flat}) > 1] if flat else []
    for s, f in zip(specs, flat, strict=False):
        s.label = {n: f.get(n) for n in varying}
    return Study(name=meta.get("name", default_name), description=meta.get("description", ""),
                 question=meta.get("question", ""), path=path, quick=quick,
                 requires=list(requires), runs=specs, duplicates=dups, tune=tune)


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
