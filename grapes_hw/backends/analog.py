"""Analog crossbar tiles from IBM aihwkit (phase-change memory and other devices).

``AnalogTileBackend`` wraps one aihwkit tile (``rpu_config.tile_class``) and maps the
weight-backend protocol onto the tile's own operations:

* ``forward`` / ``backward``: the tile's analog MVMs, with its IO non-idealities (input and
  output noise, DAC/ADC resolution, bound and noise management) as the ``rpu_config`` sets;
* ``update(x, delta, lr)``: the tile's pulsed rank update of the whole minibatch (stochastic
  pulse trains; ``W <- W - lr/B * delta^T x`` in expectation). The GRAPES-modulated error
  goes straight in, so GRAPES runs on the device and needs no extra memory;
  Each write is followed by the tile's ``post_update_step`` (as ``AnalogSGD`` does: decay,
  diffusion; clipping, remapping and the training weight modifier of inference tiles);
* ``increment(dw)``: column-by-column pulsed writes with one-hot inputs (as aihwkit's
  transfer compounds do), used by momentum to write its digital velocity to the device;
  a step beyond one pulse train (``update.desired_bl`` steps of ``dw_min``) is split into
  several verified writes instead of being clipped;
* ``read()``: the weights as the periphery reads them: ``stored`` (the tile's conductance
  state mapped to weights, ``get_weights``) or ``mvm`` (estimated from noisy forward reads,
  ``read_weights``: realistic, expensive);
* ``pulses()``: aihwkit counts pulses only on GPU, so on CPU the backend estimates them as
  the programming steps the writes took: ``sum |dW_stored| / dw_min`` per write, with
  ``dw_min`` the device's nominal step (refresh/reset pulses are not included).

One tile per layer by default. ``AnalogParams.tile_size`` splits a larger layer over a grid
of arrays (``SplitAnalogBackend``: partial sums added digitally, each array with its own
periphery); aihwkit's ``mapping.max_input_size`` / ``max_output_size`` (which act only in
its ``AnalogLinear``) are not used.

Randomness: the device-to-device variation is drawn when the tile is built, from the
device's ``construction_seed``; the backend derives it from its ``seed`` (unless the config
sets one), so it is reproducible. Programming noise and drift of inference tiles use torch's
RNG (seeded). aihwkit's C++ RNG (stochastic pulse trains, cycle-to-cycle write noise, IO
noise) is seeded at random when a tile is built, and aihwkit 1.2.0 exposes no way to seed it
(the C++ ``RPUSimple::setRandomSeed`` is not bound; ``torch.manual_seed`` does not reach
it): in-situ runs on pulsed devices, and any run with IO noise, are not bit-reproducible.

aihwkit is imported lazily: without it the rest of grapes_hw works, and building this
backend raises ``BackendUnavailable`` with install instructions.
"""

from __future__ import annotations

import copy
import enum
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..config import require
from ..errors import BackendUnavailable, ConfigError
from .base import Abilities, MemoryReport

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
            build_rpu_config(self)
        except BackendUnavailable:
            pass  # validated again when the backend is built; the message says how to install


def _lookup(name: str, option: str):
    configs, presets = _aihwkit()
    import aihwkit.inference as inference
    from aihwkit.simulator.configs import devices as cdevices

    for mod in (presets, configs, cdevices, inference):
        obj = getattr(mod, name, None)
        if isinstance(obj, type):
            return obj
    raise ConfigError(option, f"unknown aihwkit class {name!r}; e.g. PCMPreset, "
                              "MixedPrecisionPCMPreset, IdealizedPreset, InferenceRPUConfig "
                              "(or, for object fields, PCMLikeNoiseModel, GlobalDriftCompensation)")


def _set_path(obj: Any, path: str, value: Any, key: str) -> None:
    parts = path.split(".")
    for i, part in enumerate(parts):
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
            setattr(obj, part, value)
        else:
            obj = getattr(obj, part)


def build_rpu_config(params: AnalogParams):
    """The aihwkit RPU config described by ``params`` (a fresh object each call)."""
    cfg = _lookup(params.rpu_config, "analog.rpu_config")()
    if params.device is not None:
        cfg.device = _lookup(params.device, "analog.device")()
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


def _add_pair_baseline(tile: Any, g0: float) -> None:
    """Add ``g0`` to both devices of every G+/G- pair (``AnalogParams.g0``)."""
    hp = tile.get_hidden_parameters()
    keys = [k for k in ("hidden_weights_0", "hidden_weights_1") if k in hp]
    if len(keys) != 2 or "hidden_weights_2" in hp:
        raise ConfigError("analog.g0", "needs a unit cell of exactly two devices (a G+/G- pair, "
                                       "e.g. PCMPreset or MixedPrecisionPCMPreset)")
    for k in keys:
        hp[k] = hp[k] + g0
    tile.set_hidden_parameters(hp)


class AnalogTileBackend:
    """One layer's weights on an aihwkit analog tile (see the module docstring)."""

    pulse_unit = "estimated programming steps"
    """What ``pulses()`` counts: ``|dW| / dw_min`` per write, estimated (aihwkit counts
    pulses only on GPU); 0 on tiles that are not pulsed (inference tiles)."""

    def __init__(self, shape: tuple[int, int], params: AnalogParams | None = None,
                 seed: int = 0, rpu_config: Any = None):
        self.params = params or AnalogParams()
        self.shape = (int(shape[0]), int(shape[1]))
        _aihwkit()
        # A given config is copied: it is seeded below, and the caller's stays intact.
        self.rpu_config = (copy.deepcopy(rpu_config) if rpu_config is not None
                           else build_rpu_config(self.params))
        _seed_construction(self.rpu_config, seed)
        torch.manual_seed(seed)
        self.tile = self.rpu_config.tile_class(self.shape[0], self.shape[1], self.rpu_config,
                                               bias=False)
        self.training = True
        self._drift_compensation = getattr(self.tile.rpu_config, "drift_compensation", None)
        # Inference tiles (InferenceRPUConfig) can be programmed for inference and drift.
        self.abilities = Abilities(store=True, drift=hasattr(self.tile, "drift_weights")
                                   and hasattr(self.tile.rpu_config, "noise_model"))
        self._lr: float | None = None
        self._pulses = 0.0
        self._writes = 0    # pulsed tile updates (rank updates and column-wise writes)
        self._repeats = 0   # extra writes that write-verify added to increments
        self._eye: torch.Tensor | None = None
        # The stored (unscaled) weights as of the last write, kept while counting pulses: the
        # next write's "before" and GRAPES' importance read come from it instead of another
        # copy out of the tile. None: not known (after program/store/drift, or not counting).
        self._snap: torch.Tensor | None = None
        # Unscaled weights straight from the C++ tile (no bias on our tiles, CPU only).
        self._direct = not getattr(self.tile, "analog_bias", False) and not hasattr(
            self.tile.tile, "get_weights_cuda")
        device = getattr(self.rpu_config, "device", None)
        self.dw_min = _find_dw_min(device)
        self.pulsed = hasattr(self.rpu_config, "update") and self.dw_min is not None
        self.n_devices = _devices_per_weight(device) if self.pulsed else 0
        self.mixed_precision = type(device).__name__.startswith("MixedPrecision")
        update = getattr(self.rpu_config, "update", None)
        bl = getattr(update, "desired_bl", None)
        # Steps one pulsed write can make (None: writes are not pulse-limited here: float and
        # inference tiles, or mixed precision, whose increments go to the digital chi first).
        self.max_steps: int | None = (int(bl) if self.pulsed and not self.mixed_precision
                                      and isinstance(bl, int) and bl > 0 else None)

    # -- programming and reading ------------------------------------------------------------
    def program(self, w: torch.Tensor) -> None:
        if tuple(w.shape) != self.shape:
            raise ValueError(f"program: expected weights of shape {self.shape}, "
                             f"got {tuple(w.shape)}")
        self.store(w)

    def stored(self) -> torch.Tensor:
        """The weights the tile's conductances encode (no read noise; callers must not
        modify the result)."""
        raw = self._snap if self._snap is not None else self._raw()
        scales = self.tile.get_scales()
        return raw if scales is None else raw * scales.detach().reshape(-1, 1)

    def store(self, w: torch.Tensor) -> None:
        self.tile.set_weights(w.detach().float().contiguous())
        self._lr = None  # set_weights may re-derive the mapping's learning-rate scale
        self._snap = None
        if self.params.g0:
            _add_pair_baseline(self.tile, self.params.g0)

    def read(self) -> torch.Tensor:
        if self.params.read == "mvm":
            return self.tile.read_weights()[0]
        return self.stored()

    def abs_sums(self, dim: int, ideal: bool = False) -> torch.Tensor:
        if self.params.read == "mvm" and not ideal:
            return torch.linalg.vector_norm(self.read(), ord=1, dim=dim)
        # Stored weights: |raw| sums times |scale| (no scaled copy of the matrix).
        raw = self._snap if self._snap is not None else self._raw()
        scales = self.tile.get_scales()
        scales = None if scales is None else scales.detach().reshape(-1).abs()
        if dim == 1:
            out = raw.abs().sum(1)
            return out if scales is None else out.mul_(scales)
        if scales is not None and scales.numel() > 1:
            return (raw.abs() * scales[:, None]).sum(0)
        out = torch.linalg.vector_norm(raw, ord=1, dim=dim)
        return out if scales is None else out.mul_(scales)

    # -- compute -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tile.joint_forward(x.float().contiguous(), is_test=not self.training)

    def forward_inference(self, x: torch.Tensor) -> torch.Tensor:
        """The MVM at test time (aihwkit ``is_test``: drift and its compensation apply)."""
        return self.tile.joint_forward(x.float().contiguous(), is_test=True)

    def backward(self, delta: torch.Tensor) -> torch.Tensor:
        return self.tile.backward(delta.float().contiguous())

    # -- writes ------------------------------------------------------------------------------
    def _set_lr(self, lr: float) -> None:
        if lr != self._lr:
            self.tile.set_learning_rate(lr)
            self._lr = lr

    def _raw(self) -> torch.Tensor:
        """A fresh copy of the stored weights without the digital mapping scales."""
        if self._direct:
            return self.tile.tile.get_weights()
        return self.tile.get_weights(apply_weight_scaling=False)[0]

    def _before(self) -> torch.Tensor | None:
        if not (self.params.count_pulses and self.pulsed):
            return None
        return self._snap if self._snap is not None else self._raw()

    def _count(self, before: torch.Tensor | None) -> None:
        if before is None:
            return
        after = self._raw()
        self._pulses += float((after - before).abs().sum()) / self.dw_min
        self._snap = after

    def update(self, x: torch.Tensor, delta: torch.Tensor, lr: float) -> None:
        """Pulsed rank update: aihwkit sums over the batch, so the rate is ``lr / B``.

        Followed by the tile's ``post_update_step`` (once per minibatch, as ``AnalogSGD``
        does): decay and diffusion of pulsed devices; weight clipping, remapping and the
        hardware-aware-training weight modifier of inference tiles."""
        before = self._before()
        self._set_lr(lr / x.shape[0])
        self.tile.update(x.float().contiguous(), delta.float().contiguous())
        self.tile.post_update_step()
        self._writes += 1
        self._count(before)

    def increment(self, dw: torch.Tensor) -> None:
        """``W <- W + dw`` as column-wise pulsed writes: one-hot input ``e_j`` with error
        ``-dw[:, j]`` for every column j (the update of a batch of n_in one-hot vectors)."""
        n_in = self.shape[1]
        if self._eye is None:
            self._eye = torch.eye(n_in, dtype=torch.float32)
        before = self._before()
        self._set_lr(1.0)
        repeats = self._write_repeats(dw)
        self._writes += repeats
        self._repeats += repeats - 1
        if repeats == 1:
            self.tile.update(self._eye, (-dw.T).float().contiguous())
        else:
            # Write-verify: each write aims at an equal share of what is still missing, so
            # rounding to whole steps does not accumulate over the writes.
            start = self._fresh_stored()
            for i in range(repeats):
                missing = dw if i == 0 else dw - (self._fresh_stored() - start)
                self.tile.update(self._eye, (missing.T / -(repeats - i)).float().contiguous())
        self.tile.post_update_step()
        self._count(before)

    def _fresh_stored(self) -> torch.Tensor:
        raw = self._raw()
        scales = self.tile.get_scales()
        return raw if scales is None else raw * scales.detach().reshape(-1, 1)

    def _write_repeats(self, dw: torch.Tensor) -> int:
        """How many pulsed writes ``increment`` splits ``dw`` into. One write of a pulsed
        device moves a weight by at most ``update.desired_bl`` steps of ``dw_min`` (the pulse
        train's length): a larger step is clipped by aihwkit, so it is written in several
        writes instead, each verified by a read (as a write-verify periphery does)."""
        if self.max_steps is None:
            return 1
        need = dw.detach().abs().amax(dim=1).float()  # per row, logical units
        scales = self.tile.get_scales()  # logical = stored * scale (global or per row)
        if scales is not None:
            need = need / scales.detach().reshape(-1).float()
        steps = float(need.max()) / self.dw_min if need.numel() else 0.0
        return max(1, math.ceil(steps / self.max_steps)) if math.isfinite(steps) else 1

    # -- cost --------------------------------------------------------------------------------
    def memory(self) -> MemoryReport:
        n = self.shape[0] * self.shape[1]
        # Mixed-precision compounds accumulate the gradient in a digital matrix (chi).
        digital = n * 4 if self.mixed_precision else 0
        return MemoryReport(n_weights=n, bits_per_weight=0, digital_bytes=digital,
                            device_count=n * self.n_devices)

    def pulses(self) -> int:
        return int(round(self._pulses))

    def write_stats(self) -> dict:
        """Cumulative write counters and the devices' state: ``writes`` (pulsed tile
        updates: one per rank update, one per column-wise write of ``increment``),
        ``write_repeats`` (the extra writes write-verify added), ``near_saturation`` (share
        of devices within 10% of their bound: for PCM pairs, G+ or G- above 0.9 of its
        device's w_max; for bidirectional devices, within 10% of the range of either bound;
        None where the tile has no pulsed devices) and ``n_devices``."""
        sat = (_saturation(self.tile) if self.pulsed
               else {"near_saturation": None, "n_devices": 0})
        return {"writes": self._writes, "write_repeats": self._repeats, **sat}

    # -- inference-time drift ----------------------------------------------------------------
    def program_and_drift(self, t_seconds: float, compensation: bool | None = None) -> None:
        """Program the current weights to the device with the noise model of an
        ``InferenceRPUConfig`` and let them drift for ``t_seconds``; ``compensation`` turns
        global drift compensation on or off (None: as configured)."""
        if not self.abilities.drift:
            raise ConfigError("analog.rpu_config", "drift needs an InferenceRPUConfig-based "
                                                   f"tile, got {type(self.rpu_config).__name__}")
        if compensation is not None:
            if compensation:
                # The configured compensation (the model's "drift_compensation"), else global.
                comp = self._drift_compensation
                if comp is None:
                    from aihwkit.inference.compensation.drift import GlobalDriftCompensation

                    comp = self._drift_compensation = GlobalDriftCompensation()
                self.tile.rpu_config.drift_compensation = comp
            else:
                self.tile.rpu_config.drift_compensation = None
        self._snap = None
        self.tile.program_weights(from_reference=True)
        self.tile.drift_weights(t_seconds)


SATURATION_MARGIN = 0.1
"""A device is "near saturation" within this fraction of its range from its bound."""


def _saturation(tile: Any) -> dict:
    hp = tile.get_hidden_parameters()
    near, n = 0, 0
    pairs = sorted(k[len("hidden_weights_"):] for k in hp
                   if k.startswith("hidden_weights_") and f"max_bound_{k[15:]}" in hp)
    if pairs:  # devices of a compound (PCM pair): conductances in [0, max_bound]
        for i in pairs:
            g, top = hp[f"hidden_weights_{i}"], hp[f"max_bound_{i}"]
            near += int((g >= (1 - SATURATION_MARGIN) * top).sum())
            n += g.numel()
    elif "max_bound" in hp:  # one bidirectional device per weight: the weight itself
        w = tile.tile.get_weights() if hasattr(tile.tile, "get_weights") else \
            tile.get_weights(apply_weight_scaling=False)[0]
        lo, hi = hp["min_bound"], hp["max_bound"]
        span = (hi - lo) * SATURATION_MARGIN
        near = int(((w >= hi - span) | (w <= lo + span)).sum())
        n = w.numel()
    return {"near_saturation": near / n if n else None, "n_devices": n}


def _blocks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class SplitAnalogBackend:
    """One layer's weights split over a grid of crossbar arrays of at most ``tile_size`` x
    ``tile_size`` cells (``AnalogParams.tile_size``), each an ``AnalogTileBackend``.

    The (n_out, n_in) matrix is cut into output blocks (rows) and input blocks (columns).
    ``forward``: for each output block, the sum over input blocks of that array's analog MVM
    of its input slice (every array applies its own DAC/ADC, noise and bound management; the
    partial sums are added digitally); ``backward`` the same transposed. ``update`` /
    ``increment``: every array gets its slice of x / delta / dw. Reads, programming, pulses
    and memory are assembled or summed over the arrays. Every array draws its own
    device-to-device variation (seeds derived from ``seed`` and its position)."""

    pulse_unit = AnalogTileBackend.pulse_unit

    def __init__(self, shape: tuple[int, int], params: AnalogParams, seed: int = 0,
                 rpu_config: Any = None):
        self.params = params
        self.shape = (int(shape[0]), int(shape[1]))
        size = int(params.tile_size)
        self.row_blocks = _blocks(self.shape[0], size)
        self.col_blocks = _blocks(self.shape[1], size)
        n_cols = len(self.col_blocks)
        self.tiles: list[list[AnalogTileBackend]] = [
            [AnalogTileBackend((r.stop - r.start, c.stop - c.start), params,
                               seed=seed * 1009 + i * n_cols + j, rpu_config=rpu_config)
             for j, c in enumerate(self.col_blocks)]
            for i, r in enumerate(self.row_blocks)]
        first = self.tiles[0][0]
        self.rpu_config = first.rpu_config
        self.dw_min, self.pulsed = first.dw_min, first.pulsed
        self.n_devices, self.mixed_precision = first.n_devices, first.mixed_precision
        self._training = True
        self.abilities = Abilities(store=True, drift=all(t.abilities.drift for t in self._all()))

    @property
    def n_tiles(self) -> int:
        return len(self.row_blocks) * len(self.col_blocks)

    def _all(self):
        return (t for row in self.tiles for t in row)

    @property
    def training(self) -> bool:
        return self._training

    @training.setter
    def training(self, value: bool) -> None:
        self._training = bool(value)
        for t in self._all():
            t.training = self._training

    # -- programming and reading ------------------------------------------------------------
    def program(self, w: torch.Tensor) -> None:
        if tuple(w.shape) != self.shape:
            raise ValueError(f"program: expected weights of shape {self.shape}, "
                             f"got {tuple(w.shape)}")
        self.store(w)

    def store(self, w: torch.Tensor) -> None:
        for r, row in zip(self.row_blocks, self.tiles, strict=True):
            for c, t in zip(self.col_blocks, row, strict=True):
                t.store(w[r, c])

    def _assemble(self, get) -> torch.Tensor:
        return torch.cat([torch.cat([get(t) for t in row], dim=1) for row in self.tiles], dim=0)

    def stored(self) -> torch.Tensor:
        return self._assemble(lambda t: t.stored())

    def read(self) -> torch.Tensor:
        return self._assemble(lambda t: t.read())

    def abs_sums(self, dim: int, ideal: bool = False) -> torch.Tensor:
        if dim == 1:  # per output: sum over the input blocks, stacked over output blocks
            return torch.cat([sum(t.abs_sums(1, ideal) for t in row) for row in self.tiles])
        return torch.cat([sum(self.tiles[i][j].abs_sums(0, ideal)
                              for i in range(len(self.row_blocks)))
                          for j in range(len(self.col_blocks))])

    # -- compute -----------------------------------------------------------------------------
    def _mvm(self, x: torch.Tensor, is_test: bool) -> torch.Tensor:
        x = x.float()
        xs = [x[:, c].contiguous() for c in self.col_blocks]
        return torch.cat([sum(t.tile.joint_forward(xj, is_test=is_test)
                              for t, xj in zip(row, xs, strict=True)) for row in self.tiles], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mvm(x, is_test=not self._training)

    def forward_inference(self, x: torch.Tensor) -> torch.Tensor:
        return self._mvm(x, is_test=True)

    def backward(self, delta: torch.Tensor) -> torch.Tensor:
        delta = delta.float()
        ds = [delta[:, r].contiguous() for r in self.row_blocks]
        return torch.cat([sum(self.tiles[i][j].backward(ds[i]) for i in range(len(ds)))
                          for j in range(len(self.col_blocks))], dim=1)

    def update(self, x: torch.Tensor, delta: torch.Tensor, lr: float) -> None:
        x, delta = x.float(), delta.float()
        xs = [x[:, c].contiguous() for c in self.col_blocks]
        for r, row in zip(self.row_blocks, self.tiles, strict=True):
            d = delta[:, r].contiguous()
            for t, xj in zip(row, xs, strict=True):
                t.update(xj, d, lr)

    def increment(self, dw: torch.Tensor) -> None:
        for r, row in zip(self.row_blocks, self.tiles, strict=True):
            for c, t in zip(self.col_blocks, row, strict=True):
                t.increment(dw[r, c])

    # -- cost --------------------------------------------------------------------------------
    def memory(self) -> MemoryReport:
        reports = [t.memory() for t in self._all()]
        return MemoryReport(n_weights=sum(m.n_weights for m in reports), bits_per_weight=0,
                            digital_bytes=sum(m.digital_bytes for m in reports),
                            device_count=sum(m.device_count for m in reports))

    def pulses(self) -> int:
        return int(round(sum(t._pulses for t in self._all())))

    def write_stats(self) -> dict:
        """``AnalogTileBackend.write_stats`` summed over the arrays (saturation weighted by
        each array's devices)."""
        stats = [t.write_stats() for t in self._all()]
        n = sum(s["n_devices"] for s in stats)
        sat = (sum(s["near_saturation"] * s["n_devices"] for s in stats) / n
               if n and all(s["near_saturation"] is not None for s in stats) else None)
        return {"writes": sum(s["writes"] for s in stats),
                "write_repeats": sum(s["write_repeats"] for s in stats),
                "near_saturation": sat, "n_devices": n}

    def program_and_drift(self, t_seconds: float, compensation: bool | None = None) -> None:
        for t in self._all():
            t.program_and_drift(t_seconds, compensation)


def make_analog(shape, params, seed, rpu_config: Any = None):
    """Factory for ``backend = "analog"`` device models: one tile per layer, or a grid of
    arrays when ``params.tile_size`` is smaller than the layer (``rpu_config``: an aihwkit
    config object instead of the one ``params`` names)."""
    params = params or AnalogParams()
    size = params.tile_size
    if size is not None and (shape[0] > size or shape[1] > size):
        return SplitAnalogBackend(shape, params, seed, rpu_config=rpu_config)
    return AnalogTileBackend(shape, params, seed, rpu_config=rpu_config)


def parse_preset_citation(name: str) -> str:
    """First line of the aihwkit preset's docstring that cites a paper (for docs)."""
    try:
        cls = _lookup(name, "analog.rpu_config")
    except (ConfigError, BackendUnavailable):
        return ""
    doc = cls.__doc__ or ""
    m = re.search(r"(\w[^\n]*\d{4}[^\n]*)", doc)
    return m.group(1).strip() if m else ""


DRIFT_TIMES = (1.0, 3600.0, 86400.0, 31536000.0)
"""Seconds after programming at which drift is evaluated: 1 s, 1 h, 1 day, 1 year."""


def drift_evaluation(net, x_test: torch.Tensor, y_test: torch.Tensor,
                     times: tuple[float, ...] = DRIFT_TIMES, repeats: int = 3,
                     seed: int = 0) -> list[dict]:
    """Program every analog layer with its noise model, drift, and test.

    For each compensation setting (global drift compensation on, off) and each time, the
    trained weights are programmed afresh (new programming noise) ``repeats`` times; the
    mean and std of the test accuracy are reported. Needs InferenceRPUConfig-based tiles.
    """
    layers = [layer.backend for layer in net.layers]
    if not all(b.abilities.drift for b in layers):
        raise ConfigError("drift_eval", "needs every layer on an analog inference tile "
                                          "(an InferenceRPUConfig-based device model, e.g. "
                                          "pcm-inference)")
    out = []
    torch.manual_seed(seed)
    for comp in (True, False):
        for t in times:
            accs = []
            for _ in range(repeats):
                for b in layers:
                    b.program_and_drift(t, compensation=comp)
                accs.append(float((net.predict(x_test) == y_test).double().mean()))
            acc = torch.tensor(accs, dtype=torch.float64)
            out.append({"t_seconds": t, "compensation": comp, "test_acc": float(acc.mean()),
                        "test_acc_std": float(acc.std()) if repeats > 1 else 0.0,
                        "repeats": repeats})
    return out
