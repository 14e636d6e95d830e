"""Run keys: the fields of a run's configuration that identify it (device files by content),
the key's hash, and whether a stored result is stale for the planned run.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING, Any

from grapes_hw.config import to_dict
from grapes_hw.errors import ConfigError

if TYPE_CHECKING:
    from grapes_hw.studies.spec import RunSpec

KEY_EXCLUDED_FIELDS = ("data_dir", "download")
"""Fields that do not change what a run computes, left out of its key."""


def config_to_dict(cfg) -> dict:
    d = to_dict(cfg.flat())
    d["layers"] = [int(v) for v in cfg.network.layers]
    return d


def _defaults() -> dict:
    from grapes_hw.training.config import TrainConfig

    return config_to_dict(TrainConfig())


LEGACY_KEY_DEFAULTS: dict[str, Any] = {"lr": 0.1}
"""Values left out of a run's key although they are no longer ``TrainConfig`` defaults: the
learning rate was 0.1 for every optimizer when the committed results were run, and keys of
runs at that value must stay what they were. ``lr`` enters the key resolved (an unset lr is
its optimizer's default), so two runs that train at different rates never share a key."""


def _resolved_lr(d: dict) -> Any:
    lr = d.get("lr")
    if lr is None:
        from grapes_hw.config import default_lr

        lr = default_lr(d.get("optimizer", "sgd"))
    return lr


def is_device_path(backend: Any) -> bool:
    """A ``backend`` value naming a TOML file (rather than a shipped model name)."""
    return isinstance(backend, str) and (backend.endswith(".toml") or os.sep in backend
                                         or "/" in backend)


def device_content(model_dict: dict) -> dict:
    """``grapes_hw.backends.registry.device_content`` (imported on use: importing the
    backends package imports torch, and ``sweep -h`` must answer at once)."""
    from grapes_hw.backends.registry import device_content as content

    return content(model_dict)


def device_digest(backend: str) -> str:
    """SHA-256 (16 hex digits) of the resolved content of a device model."""
    from grapes_hw.backends.registry import load_device_model

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
    return config_difference(stored, planned) is None


def config_difference(stored: dict, planned: dict) -> str | None:
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


def _snu_difference(stored: dict, spec: RunSpec) -> str | None:
    """How the SNU/sSNU settings a run recorded (``config.snu``, defaults resolved for its
    model) differ from what the planned run would use now: a changed model default makes
    the record stale although the run key (TrainConfig fields only) is the same. A field
    the record lacks (added later) matches only its ``RECORDED_BEFORE`` value."""
    cfg = spec.config
    if cfg.network.model not in ("snu", "ssnu") or not isinstance(stored.get("snu"), dict):
        return None
    from grapes_hw.functional.snu import RECORDED_BEFORE
    from grapes_hw.models.snu import snu_params

    try:
        now = to_dict(snu_params(cfg).resolved(cfg.network.model == "ssnu"))
    except ConfigError:
        return None  # the planned config is checked (and reported) elsewhere
    was = stored["snu"]
    for k, v in now.items():
        old = was.get(k, RECORDED_BEFORE.get(k, _MISSING))
        if old is _MISSING or _canon(old) != _canon(v):
            return (f"config snu.{k}: recorded "
                    f"{'nothing' if old is _MISSING else _canon(old)}, planned {_canon(v)}")
    return None


_MISSING = object()


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
    diff = config_difference(record.get("config") or {}, planned) or _snu_difference(
        record.get("config") or {}, spec)
    if diff:
        return diff
    if not record.get("device_model"):  # an error record: nothing ran on a device
        return None
    backend = planned.get("backend")
    current = models.get(backend)
    if current is None:
        from grapes_hw.backends.registry import load_device_model

        current = models[backend] = load_device_model(backend, option="backend").to_dict()
    dev = device_difference(record.get("device_model"), current)
    if dev:
        return f"device model {backend} changed: {dev}"
    return None


def _canon(v: Any) -> str:
    return json.dumps(to_dict(v), sort_keys=True, separators=(",", ":"))
