"""Device models: TOML files in ``device_models/`` loaded into typed dataclasses.

A device model file looks like::

    name = "float32"
    description = "Ideal float32 weights: the software baseline"
    backend = "float"                 # a key of BACKEND_KINDS
    citation = ""                     # the paper a preset's numbers come from

    [float]                           # the backend's own parameter table
    dtype = "float32"

``--backend`` takes a model name (a file ``device_models/NAME.toml``) or a path to a TOML
file. Backend kinds register a parameter dataclass and a factory in ``BACKEND_KINDS``; the
analog kind is imported lazily so the package works without aihwkit.

Loading is strict: an unknown key at any level is named (with "did you mean" for a near
miss) before required keys are checked, and a kind whose table is required (``fixed``,
``analog``: their parameters define the device) fails when the file lacks it, rather than
running on defaults the author never chose. ``[float]`` may be left out (float32).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from grapes_hw.config import did_you_mean, from_mapping, to_dict, unknown_keys_error
from grapes_hw.errors import ConfigError


@dataclass
class BackendKind:
    """How to build one kind of backend: ``module:Params`` and ``module:factory`` paths.

    ``factory(shape, params, seed)`` returns the bare WeightBackend; ``make_backend`` wraps it
    in the model's noise (once, for every kind).
    """

    params: str
    factory: str
    summary: str
    table_required: bool = True
    """Whether a model file must have this kind's table (``[fixed]``, ...): False only where
    the defaults are the obvious device (ideal float32)."""

    def load(self) -> tuple[type, Callable[..., Any]]:
        mod_p, cls_p = self.params.split(":")
        mod_f, fn_f = self.factory.split(":")
        return (getattr(importlib.import_module(mod_p), cls_p),
                getattr(importlib.import_module(mod_f), fn_f))


BACKEND_KINDS: dict[str, BackendKind] = {
    "float": BackendKind("grapes_hw.backends.float_backend:FloatParams",
                         "grapes_hw.backends:make_float", "ideal floating point",
                         table_required=False),
    "fixed": BackendKind("grapes_hw.backends.fixed_point:FixedParams",
                         "grapes_hw.backends.fixed_point:make_fixed",
                         "fixed-point integer weights"),
    "analog": BackendKind("grapes_hw.backends.analog.config:AnalogParams",
                          "grapes_hw.backends.analog.array:make_analog",
                          "IBM aihwkit analog tile (PCM, ...)"),
}


def register_backend_kind(name: str, kind: BackendKind) -> None:
    """Add a backend kind (used by the fixed-point and analog modules)."""
    BACKEND_KINDS[name] = kind


@dataclass
class DeviceModel:
    """A loaded device model: which backend, its parameters, its noise."""

    name: str
    """Short name (the file stem for shipped models)."""
    description: str
    """One line shown by ``grapes-hw devices``."""
    backend: str
    """Backend kind: a key of ``BACKEND_KINDS`` (float, fixed, analog)."""
    params: Any
    """The backend's parameter dataclass instance."""
    noise: Any = None
    """The noise-model dataclass (``grapes_hw.backends.noise.NoiseParams``) or None for none."""
    citation: str = ""
    """Source paper of the preset's numbers, if any."""
    path: str = ""
    """File it was loaded from."""
    extra: dict = field(default_factory=dict)
    """Anything else to record with the model (JSON-able; in ``to_dict`` under ``extra`` when
    not empty). A model made from an aihwkit rpu_config object keeps its ``repr`` here."""
    factory: Callable[..., Any] | None = field(default=None, repr=False, compare=False)
    """Builds one layer's backend as ``factory(shape, params, seed)`` in place of the
    kind's registered factory (``BACKEND_KINDS``); None: the registered one. Set by
    ``device_model_from_rpu_config``; a factory for a custom weight store can be given too."""

    def check(self, option: str = "backend") -> None:
        """A model built in Python gets the checks a model file gets: a known backend kind,
        that kind's parameter dataclass (any object with a custom ``factory``), every field
        of the right type and in range, noise a ``NoiseParams`` or None."""
        kind = BACKEND_KINDS.get(self.backend)
        if kind is None:
            raise ConfigError(f"{option}.backend", f"got {self.backend!r}; allowed values: "
                                                   f"{', '.join(BACKEND_KINDS)}")
        params_cls, _ = kind.load()
        if self.factory is None or isinstance(self.params, params_cls):
            if not isinstance(self.params, params_cls):
                raise ConfigError(f"{option}.params", f"got {self.params!r}; backend "
                                                      f"{self.backend!r} takes a "
                                                      f"{params_cls.__name__}")
            _checked(self.params, f"{option}.params")
        if self.noise is not None:
            from grapes_hw.backends.noise import NoiseParams

            if not isinstance(self.noise, NoiseParams):
                raise ConfigError(f"{option}.noise", f"got {self.noise!r}; expected a "
                                                     "NoiseParams or None")
            _checked(self.noise, f"{option}.noise")

    def to_dict(self) -> dict:
        out = {
            "name": self.name,
            "description": self.description,
            "backend": self.backend,
            "citation": self.citation,
            "path": self.path,
            "params": to_dict(self.params),
            "noise": to_dict(self.noise) if self.noise is not None else None,
        }
        if self.extra:
            out["extra"] = to_dict(self.extra)
        return out


def _checked(obj: Any, prefix: str) -> None:
    from grapes_hw.config import check_types

    try:
        check_types(obj)
        check = getattr(obj, "check", None)
        if callable(check):
            check()
    except ConfigError as e:
        raise ConfigError(f"{prefix}.{e.field}", e.message) from None


def models_dir() -> Path:
    """The shipped ``device_models/`` folder (``$GRAPES_HW_DEVICE_MODELS`` overrides)."""
    env = os.environ.get("GRAPES_HW_DEVICE_MODELS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "device_models"  # beside the package


def natural_key(name: str) -> list:
    """Sort key that orders numbers by value: fixed2 < fixed3 < fixed10, read5 < read10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def list_models() -> list[Path]:
    """The shipped model files, naturally sorted by name (fixed2 before fixed10)."""
    return sorted(models_dir().glob("*.toml"), key=lambda p: natural_key(p.stem))


def _resolve(name_or_path: str, option: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or os.sep in name_or_path:
        if not p.is_file():
            raise ConfigError(option, f"device model file not found: {name_or_path}")
        return p
    cand = models_dir() / f"{name_or_path}.toml"
    if cand.is_file():
        return cand
    stems = [m.stem for m in list_models()]
    raise ConfigError(option, f"unknown device model {name_or_path!r}"
                              f"{did_you_mean(name_or_path, stems)}; shipped models: "
                              f"{', '.join(stems)} (or give a path to a .toml file)")


def load_device_model(name_or_path: str, option: str = "backend") -> DeviceModel:
    """Load a device model by shipped name or TOML path; errors name the offending key.

    A ``DeviceModel`` or an aihwkit rpu_config object is accepted too (see
    ``resolve_device_model``), so every caller of a ``TrainConfig.backend`` takes all four."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        return resolve_device_model(name_or_path, option)
    name_or_path = os.fspath(name_or_path)
    path = _resolve(name_or_path, option)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(option, f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(option, f"{path}: not UTF-8 text (byte {e.start}); TOML files are "
                                  "UTF-8") from None
    except OSError as e:
        raise ConfigError(option, f"cannot read {path}: {e.strerror or e}") from None
    return device_model_from_dict(data, source=str(path))


TOP_LEVEL_KEYS: tuple[str, ...] = ("name", "description", "backend", "citation")
"""The keys of a model file outside its tables."""


def device_model_from_dict(data: dict, source: str = "<dict>") -> DeviceModel:
    data = dict(data)
    where = f"{source}: " if source else ""

    def err(key: str, msg: str) -> ConfigError:
        return ConfigError(key, where + msg)

    # Unknown keys first, so a typo ("descripton") is named as such and not reported as the
    # required key it was meant to be.
    allowed = [*TOP_LEVEL_KEYS, *BACKEND_KINDS, "noise"]
    unknown = [k for k in data if k not in allowed]
    if unknown:
        e = unknown_keys_error(unknown, allowed, shown=[
            *TOP_LEVEL_KEYS, *(f"[{k}]" for k in (*BACKEND_KINDS, "noise"))])
        raise err(e.field, e.message)
    for key in ("name", "description", "backend"):
        if key not in data:
            raise err(key, "required key is missing")
        if not isinstance(data[key], str):
            raise err(key, f"expected a string, got {data[key]!r}")
    kind_name = data.pop("backend")
    if kind_name not in BACKEND_KINDS:
        raise err("backend", f"got {kind_name!r}{did_you_mean(kind_name, BACKEND_KINDS)}; "
                             f"allowed values: {', '.join(BACKEND_KINDS)}")
    kind = BACKEND_KINDS[kind_name]
    name = data.pop("name")
    description = data.pop("description")
    citation = data.pop("citation", "")
    if not isinstance(citation, str):
        raise err("citation", f"expected a string, got {citation!r}")
    others = [k for k in BACKEND_KINDS if k != kind_name and k in data]
    if others:
        raise err(others[0], f"a [{others[0]}] table, but backend = {kind_name!r}: a model "
                             f"has the table of its own backend only ([{kind_name}]); change "
                             f"backend or rename the table")
    params_cls, _ = kind.load()
    if kind_name not in data and kind.table_required:
        fields = ", ".join(f.name for f in dataclasses.fields(params_cls) if f.init)
        raise err(kind_name, f"backend = {kind_name!r} needs a [{kind_name}] table (keys: "
                             f"{fields}); it is missing, and its defaults are not a device "
                             "anyone chose")
    params_table = data.pop(kind_name, {})
    if kind.table_required and isinstance(params_table, dict) and not params_table:
        fields = ", ".join(f.name for f in dataclasses.fields(params_cls) if f.init)
        raise err(kind_name, f"the [{kind_name}] table is empty (keys: {fields}); its "
                             "defaults are not a device anyone chose")
    noise_table = data.pop("noise", None)
    try:
        params = from_mapping(params_cls, params_table, kind_name)
        noise = None
        if noise_table is not None:
            from grapes_hw.backends.noise import NoiseParams

            noise = from_mapping(NoiseParams, noise_table, "noise")
    except ConfigError as e:
        raise err(e.field, e.message) from None
    return DeviceModel(name=name, description=description, backend=kind_name, params=params,
                       noise=noise, citation=citation, path=source)


def device_content(model_dict: dict) -> dict:
    """What of a device model (``DeviceModel.to_dict()``) changes what a run computes: its
    backend kind, parameters and noise (not its name, description, citation or file)."""
    return {k: model_dict.get(k) for k in ("backend", "params", "noise")}


def make_backend(model: DeviceModel, shape: tuple[int, int], seed: int):
    """Instantiate ``model``'s backend for one layer of ``shape`` ``(n_out, n_in)``."""
    factory = model.factory
    if factory is None:
        _, factory = BACKEND_KINDS[model.backend].load()
    backend = factory(shape, model.params, seed)
    if model.noise is None:
        return backend
    from grapes_hw.backends.noise import wrap_with_noise

    return wrap_with_noise(backend, model.noise, seed)


def is_rpu_config(obj: Any) -> bool:
    """Whether ``obj`` is an aihwkit RPU configuration (``PCMPreset()``, ...). Without aihwkit
    imported nothing can be one, and aihwkit is not imported to find out."""
    if "aihwkit" not in sys.modules:
        return False
    try:
        from aihwkit.simulator.parameters.base import RPUConfigBase
    except ImportError:  # pragma: no cover - a broken aihwkit install
        return False
    return isinstance(obj, RPUConfigBase)


class RPUConfigFactory:
    """The backend factory of a model made from an rpu_config object: every layer gets
    ``AnalogTileBackend(shape, params, seed, rpu_config=...)`` (a copy of the config; a grid
    of them when ``params.tile_size`` is smaller than the layer). A class rather than a
    closure, so a ``DeviceModel`` holding it pickles."""

    def __init__(self, rpu_config: Any):
        self.rpu_config = rpu_config

    def __call__(self, shape, params, seed):
        from grapes_hw.backends.analog.array import make_analog

        return make_analog(shape, params, seed, rpu_config=self.rpu_config)


def device_model_from_rpu_config(rpu_config: Any, *, name: str | None = None,
                                 description: str | None = None, params: Any = None,
                                 noise: Any = None, citation: str = "") -> DeviceModel:
    """A ``DeviceModel`` of kind ``analog`` whose layers are tiles of ``rpu_config``, an aihwkit
    RPU configuration object built in Python (e.g. a ``PCMPreset()`` with fields changed).

    ``params``: an ``AnalogParams`` for the backend's own settings (``read``, ``count_pulses``,
    ``g0``, ``tile_size``); its ``rpu_config`` name is replaced by the object's class name,
    for the record. ``noise``: a ``grapes_hw.backends.noise.NoiseParams`` or None. ``name`` defaults
    to the class name. The config's ``repr`` is kept in ``extra["rpu_config"]`` (result.json's
    ``device_model``), so a run's record says exactly which device it ran on."""
    if not is_rpu_config(rpu_config):
        raise ConfigError("backend", f"expected an aihwkit rpu_config object, got "
                                     f"{type(rpu_config).__name__}")
    from grapes_hw.backends.analog.config import AnalogParams

    cls = type(rpu_config).__name__
    if params is None:
        params = AnalogParams(rpu_config=cls)
    elif not isinstance(params, AnalogParams):
        raise ConfigError("params", f"expected grapes_hw.backends.analog.AnalogParams, got "
                                    f"{type(params).__name__}")
    else:
        params = dataclasses.replace(params, rpu_config=cls)
    return DeviceModel(
        name=name or cls,
        description=description or f"aihwkit {cls} object given in Python",
        backend="analog", params=params, noise=noise, citation=citation,
        path="", extra={"rpu_config": repr(rpu_config),
                        "rpu_config_class": f"{type(rpu_config).__module__}.{cls}"},
        factory=RPUConfigFactory(rpu_config))


def resolve_device_model(backend: Any, option: str = "backend") -> DeviceModel:
    """The device model ``backend`` stands for (``TrainConfig.backend``): a shipped model's
    name, a path to a TOML file (str or ``os.PathLike``), a ``DeviceModel`` (used as is) or an
    aihwkit rpu_config object (``device_model_from_rpu_config``). Errors name ``option``."""
    if isinstance(backend, DeviceModel):
        backend.check(option)
        return backend
    if isinstance(backend, (str, os.PathLike)):
        return load_device_model(os.fspath(backend), option)
    if is_rpu_config(backend):
        return device_model_from_rpu_config(backend)
    raise ConfigError(option, f"got a {type(backend).__name__}; expected a device model name "
                              "(e.g. float32, pcm-insitu), a path to a .toml file, a "
                              "grapes_hw.backends.registry.DeviceModel or an aihwkit "
                              "rpu_config object")


def describe_backend(backend: Any) -> str:
    """``backend`` as a short JSON-able label: itself for a name or path, the model's name for
    a ``DeviceModel``, the class name for an rpu_config object (result.json's
    ``config.backend``; the full description is in its ``device_model``)."""
    if isinstance(backend, (str, os.PathLike)):
        return os.fspath(backend)
    if isinstance(backend, DeviceModel):
        return backend.name
    return type(backend).__name__
