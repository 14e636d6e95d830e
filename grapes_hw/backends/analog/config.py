"""aihwkit rpu_config from a device model's ``[analog]`` table (``AnalogParams``): presets,
dotted-path overrides, seeding, and what a preset's device looks like (dw_min, devices per
weight). aihwkit is imported on first use, never at import time.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from grapes_hw.config import require
from grapes_hw.errors import BackendUnavailable, ConfigError

INSTALL_HINT = (
    "the analog backend needs IBM aihwkit 1.2.0 built against your torch: run `make setup` "
    "(or: apt-get install libopenblas-dev; pip install scikit-build pybind11 ninja cmake "
    "setuptools wheel mypy; pip install --no-build-isolation --no-deps aihwkit==1.2.0)"
)


def _aihwkit():
    try:
        import aihwkit.simulator.configs as configs
        import aihwkit.simulator.presets as presets
    except ImportError as e:  # pragma: no cover - exercised only without aihwkit
        raise BackendUnavailable(f"{INSTALL_HINT} ({e})") from None
    return configs, presets


@dataclass
class AnalogParams:
    """An aihwkit tile configuration (TOML table ``[analog]``)."""

    rpu_config: str = "PCMPreset"
    """Name of an aihwkit RPU configuration class: a preset from
    ``aihwkit.simulator.presets`` (PCMPreset, MixedPrecisionPCMPreset, IdealizedPreset, ...)
    or a config from ``aihwkit.simulator.configs`` (InferenceRPUConfig, SingleRPUConfig,
    FloatingPointRPUConfig, ...)."""
    device: str | None = None
    """Optional device class (from ``aihwkit.simulator.presets`` or
    ``aihwkit.simulator.configs.devices``) assigned to ``rpu_config.device`` before
    ``set`` is applied, e.g. PCMPresetUnitCell for a UnitCellRPUConfig."""
    set: dict = field(default_factory=dict)
    """Field overrides on the RPU config by dotted path, e.g.
    ``"mapping.weight_scaling_omega" = 1.0`` or ``"device.device.refresh_every" = 0``.
    A list on the path (``unit_cell_devices``) applies the rest of the path to every element;
    enum fields take the member name as a string (``"forward.bound_management" = "NONE"``);
    object fields take an aihwkit class name, built with its defaults
    (``"drift_compensation" = "GlobalDriftCompensation"``, ``"noise_model" =
    "PCMLikeNoiseModel"``) or ``"none"``; keys apply in file order."""
    read: Literal["stored", "mvm"] = "stored"
    """How ``read()`` (and hence GRAPES' importance) reads the weights: ``stored`` maps the
    conductance state to weights (no read noise); ``mvm`` estimates them from noisy forward
    passes (aihwkit ``read_weights``; realistic and much slower)."""
    count_pulses: bool = True
    """Estimate write pulses (``|dW| / dw_min`` per write); costs two weight copies per write."""
    g0: float = 0.0
    """Baseline conductance (in the device's normalized units, 0..w_max) added to BOTH devices
    of every differential pair (G+, G-) after each ``program``/``store``: the weight
    ``G+ - G-`` is unchanged, but the devices start at a pre-SET conductance instead of 0
    (where the PCM step response is steepest). Needs a two-device unit cell (PCMPreset,
    MixedPrecisionPCMPreset); 0 leaves the pair as aihwkit programs it."""
    tile_size: int | None = None
    """Size of one physical crossbar array, in cells: at most ``tile_size`` rows (inputs)
    and ``tile_size`` columns (outputs). A larger layer is split over a grid of arrays
    (``SplitAnalogBackend``): each array has its own DAC/ADC and IO noise, and the partial
    sums of the arrays along a layer's inputs are added digitally. None: one array per
    layer, whatever its size. (aihwkit's own ``mapping.max_input_size`` /
    ``max_output_size`` are not used: they act only inside ``AnalogLinear``.)"""

    def check(self) -> None:
        require(self.read in ("stored", "mvm"), "read",
                f"got {self.read!r}; allowed values: stored, mvm")
        require(self.g0 >= 0, "g0", f"got {self.g0}; must be >= 0")
        require(self.tile_size is None or (isinstance(self.tile_size, int)
                                           and not isinstance(self.tile_size, bool)
                                           and self.tile_size >= 1),
                "tile_size", f"got {self.tile_size!r}; must be a positive integer or absent")
        try:
            cfg = build_rpu_config(self)
        except BackendUnavailable:
            return  # validated again when the backend is built; the message says how to install
        try:  # a 2x2 tile: what aihwkit accepts as a field need not make a working tile
            cfg.tile_class(2, 2, cfg)
        except Exception as e:  # aihwkit raises TypeError, RuntimeError, ValueError, ...
            raise ConfigError("analog", f"aihwkit cannot build a tile from this configuration "
                                        f"({type(e).__name__}: {e})") from None


def _lookup(name: str, option: str, kind: str = "object"):
    """The aihwkit class called ``name``; ``kind`` is what it must be: ``rpu_config`` (an RPU
    configuration), ``device`` (a device or unit cell) or ``object`` (any class, for object
    fields such as noise_model)."""
    configs, presets = _aihwkit()
    import aihwkit.inference as inference
    from aihwkit.simulator.configs import devices as cdevices
    from aihwkit.simulator.parameters.base import RPUConfigBase

    for mod in (presets, configs, cdevices, inference):
        obj = getattr(mod, name, None)
        if isinstance(obj, type):
            break
    else:
        raise ConfigError(option, f"unknown aihwkit class {name!r}; e.g. PCMPreset, "
                                  "MixedPrecisionPCMPreset, IdealizedPreset, InferenceRPUConfig "
                                  "(or, for object fields, PCMLikeNoiseModel, "
                                  "GlobalDriftCompensation)")
    is_config = issubclass(obj, RPUConfigBase)
    if kind == "rpu_config" and not is_config:
        raise ConfigError(option, f"{name!r} is not an RPU configuration; e.g. PCMPreset, "
                                  "MixedPrecisionPCMPreset, IdealizedPreset, InferenceRPUConfig, "
                                  "SingleRPUConfig")
    if kind == "device" and (is_config or not hasattr(obj, "as_bindings")):
        raise ConfigError(option, f"{name!r} is not an aihwkit device; e.g. PCMPresetDevice, "
                                  "PCMPresetUnitCell, ConstantStepDevice, SoftBoundsDevice")
    return obj


def _set_path(obj: Any, path: str, value: Any, key: str) -> None:
    parts = path.split(".")
    for i, part in enumerate(parts):
        if not part or part.startswith("_"):
            raise ConfigError(key, f"{part!r} is not a configuration field (a dotted path of "
                                   "public field names, e.g. \"forward.out_noise\")")
        if isinstance(obj, (list, tuple)):
            for item in obj:
                _set_path(item, ".".join(parts[i:]), value, key)
            return
        if not hasattr(obj, part):
            fields = sorted(k for k in vars(obj) if not k.startswith("_")) if hasattr(
                obj, "__dict__") else []
            raise ConfigError(key, f"{type(obj).__name__} has no field {part!r}; fields: "
                                   f"{', '.join(fields)}")
        if i == len(parts) - 1:
            current = getattr(obj, part)
            if isinstance(current, enum.Enum) and isinstance(value, str):
                try:
                    value = type(current)[value]
                except KeyError:
                    allowed = ", ".join(m.name for m in type(current))
                    raise ConfigError(key, f"got {value!r}; allowed values: {allowed}") from None
            elif isinstance(current, bool) and not isinstance(value, bool):
                raise ConfigError(key, f"got {value!r}; expected true or false")
            elif isinstance(current, (int, float)) and not isinstance(current, bool):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(key, f"got {value!r}; expected a number")
                value = type(current)(value) if isinstance(current, float) else value
            elif isinstance(value, str) and not isinstance(current, str):
                # An object field (noise_model, drift_compensation, ...): a class name builds
                # a default instance, "none" clears it; set its fields on later paths.
                if value.lower() == "none":
                    value = None
                else:
                    cls = _lookup(value, key)
                    value = cls if isinstance(current, type) else cls()
            elif current is not None and not isinstance(
                    current, (bool, int, float, str, list, tuple, dict, enum.Enum, type)):
                # an object field given a number, a list, a table: aihwkit would fail later,
                # deep inside the tile's construction
                raise ConfigError(key, f"got {value!r}; {part!r} holds a "
                                       f"{type(current).__name__}: give an aihwkit class "
                                       "name, or \"none\", or set its fields by a longer path")
            setattr(obj, part, value)
        else:
            obj = getattr(obj, part)


def build_rpu_config(params: AnalogParams):
    """The aihwkit RPU config described by ``params`` (a fresh object each call)."""
    cfg = _lookup(params.rpu_config, "analog.rpu_config", "rpu_config")()
    if params.device is not None:
        cfg.device = _lookup(params.device, "analog.device", "device")()
    for path, value in params.set.items():
        _set_path(cfg, path, value, f'analog.set."{path}"')
    return cfg


def _find_dw_min(device: Any, depth: int = 0) -> float | None:
    """The nominal programming step of the first pulsed device inside ``device``."""
    if device is None or depth > 5:
        return None
    dw = getattr(device, "dw_min", None)
    if isinstance(dw, (int, float)) and dw > 0:
        return float(dw)
    for attr in ("device", "unit_cell_devices", "device_array"):
        sub = getattr(device, attr, None)
        if isinstance(sub, (list, tuple)):
            sub = sub[0] if sub else None
        found = _find_dw_min(sub, depth + 1)
        if found:
            return found
    return None


def _devices_per_weight(device: Any) -> int:
    if device is None:
        return 1
    inner = getattr(device, "device", None)
    if inner is not None and hasattr(inner, "unit_cell_devices"):
        return len(inner.unit_cell_devices)
    cells = getattr(device, "unit_cell_devices", None)
    return len(cells) if cells else 1


def _seed_construction(rpu_config: Any, seed: int) -> None:
    """Make the device-to-device variation reproducible: aihwkit draws the per-device
    parameters (dw_min, bounds, ...) at construction from ``device.construction_seed`` (0:
    a random seed); an unset (0) seed is replaced by one derived from ``seed``."""
    device = getattr(rpu_config, "device", None)
    if device is not None and getattr(device, "construction_seed", None) == 0:
        device.construction_seed = 1 + (int(seed) * 7919) % 2_000_000_000


def parse_preset_citation(name: str) -> str:
    """First line of the aihwkit preset's docstring that cites a paper (for docs)."""
    try:
        cls = _lookup(name, "analog.rpu_config")
    except (ConfigError, BackendUnavailable):
        return ""
    doc = cls.__doc__ or ""
    m = re.search(r"(\w[^\n]*\d{4}[^\n]*)", doc)
    return m.group(1).strip() if m else ""
