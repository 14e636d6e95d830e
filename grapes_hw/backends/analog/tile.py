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
import math
from typing import Any

import torch

from grapes_hw.backends.analog.config import (
    AnalogParams,
    _aihwkit,
    _devices_per_weight,
    _find_dw_min,
    _seed_construction,
    build_rpu_config,
)
from grapes_hw.backends.base import Abilities, MemoryReport
from grapes_hw.errors import ConfigError


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
