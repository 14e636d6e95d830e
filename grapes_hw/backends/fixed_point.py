"""Fixed-point weights: signed integers on a uniform grid, every write rounded and saturated.

Number format (one scheme, symmetric, per layer)::

    qmax = 2**(bits - 1) - 1                # largest integer magnitude (127 for 8 bits)
    step = w_max / qmax                     # weight value of one integer unit (one LSB)
    W    = q * step,  q integer in [-qmax, qmax]

The integer ``-2**(bits-1)`` is never used, so the grid is symmetric and has ``2**bits - 1``
levels. ``w_max`` is either a number (the same range for every layer) or ``"auto"``:
``w_max = w_max_factor * sqrt(6 / n_in)``, i.e. ``w_max_factor`` times the layer's He-uniform
initialisation limit (0.087 for a 784-input layer, 0.153 for a 256-input layer). The default
factor 2 leaves room for the weights to grow to twice their initial range before saturating.

Storage of record is the integer tensor ``q`` (``torch.int8`` for bits <= 8, ``torch.int16``
for bits <= 16). A float32 shadow ``w = q * step`` is kept in sync by every write and used for
the forward/backward matrix products (it equals the dequantised integers exactly).

Writes (``update``, ``increment``; ``program`` and ``store`` set values) round the new value
``q + dW / step`` to an integer, ``nearest`` (round half to even) or ``stochastic``
(``floor(v + u)``, ``u ~ U[0, 1)``: unbiased, ``E[round(v)] = v``; seeded and reproducible:
``u`` is a counter-based hash of the seed, the write number and the cell, see
``_fixed_kernels``), and saturate at
``+-qmax``. The work is one fused numba pass per write (compiled on first use):
the gradient ``delta^T x`` is formed by BLAS into a preallocated buffer, then the kernel
rounds, clamps, stores the integers and the shadow and counts the changed cells.

Optional converters: ``dac_bits`` quantises the inputs ``x`` the array sees (forward and the
update's ``x``), ``adc_bits`` the error vectors ``delta`` it sees (backward and the update's
``delta``). Both are symmetric, per sample (per row of the batch) scaled to that row's
max |value| (like aihwkit's abs-max noise management), ``2**(bits-1) - 1`` levels per sign,
round to nearest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from grapes_hw.backends.base import Abilities, MemoryReport, check_shape, check_update
from grapes_hw.config import require

Rounding = Literal["nearest", "stochastic"]


@dataclass
class FixedParams:
    """Parameters of the fixed-point backend (TOML table ``[fixed]``)."""

    bits: int = 8
    """Bits per weight, sign included (2..16); integers in ``[-(2**(bits-1)-1), 2**(bits-1)-1]``."""
    w_max: float | Literal["auto"] = "auto"
    """Largest representable |weight| (weight units, same for every layer), or ``"auto"``:
    ``w_max_factor * sqrt(6 / n_in)`` per layer (``w_max_factor`` times the He-uniform init
    limit). One LSB (step) is ``w_max / (2**(bits-1) - 1)``."""
    w_max_factor: float = 2.0
    """With ``w_max = "auto"``: the range as a multiple of the layer's He-uniform init limit
    ``sqrt(6 / n_in)`` (dimensionless, > 0)."""
    rounding: Rounding = "stochastic"
    """Rounding of every write: ``nearest`` or ``stochastic`` (unbiased, seeded)."""
    dac_bits: int | None = None
    """Quantise the layer inputs the array sees to this many bits (signed, per-sample abs-max
    scale; 2..16); ``null``/absent = exact inputs."""
    adc_bits: int | None = None
    """Quantise the error vectors the array sees (backward and update) to this many bits
    (signed, per-sample abs-max scale; 2..16); ``null``/absent = exact errors."""

    def check(self) -> None:
        require(isinstance(self.bits, int) and 2 <= self.bits <= 16, "bits",
                f"got {self.bits!r}; allowed 2..16")
        if isinstance(self.w_max, str):
            require(self.w_max == "auto", "w_max",
                    f"got {self.w_max!r}; expected a positive number or \"auto\"")
        else:
            require(math.isfinite(self.w_max) and self.w_max > 0, "w_max",
                    f"got {self.w_max!r}; expected a positive number or \"auto\"")
        require(math.isfinite(self.w_max_factor) and self.w_max_factor > 0, "w_max_factor",
                f"got {self.w_max_factor!r}; must be a positive number")
        require(self.w_max == "auto" or self.w_max_factor == FixedParams.w_max_factor,
                "w_max_factor",
                f"got {self.w_max_factor!r} with w_max = {self.w_max!r}; it sets the range "
                "only with w_max = \"auto\" (remove one of the two)")
        require(self.rounding in ("nearest", "stochastic"), "rounding",
                f"got {self.rounding!r}; allowed values: 'nearest', 'stochastic'")
        for name in ("dac_bits", "adc_bits"):
            v = getattr(self, name)
            require(v is None or 2 <= v <= 16, name, f"got {v!r}; allowed 2..16 or null (off)")

    def range_for(self, n_in: int) -> float:
        """``w_max`` of a layer with ``n_in`` inputs."""
        if self.w_max == "auto":
            return float(self.w_max_factor * math.sqrt(6.0 / n_in))
        return float(self.w_max)


def quantize_symmetric(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-row abs-max symmetric quantisation to ``2**(bits-1) - 1`` levels per sign (a new
    tensor; rows of zeros stay zero)."""
    levels = float((1 << (bits - 1)) - 1)
    scale = x.abs().amax(dim=1, keepdim=True).div_(levels)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(x / scale).clamp_(-levels, levels).mul_(scale)


def _mix32(x: int) -> int:
    """Wellons' lowbias32 hash of a 32-bit word (two multiplies): derives the per-write keys
    of stochastic rounding from the seed and the write counter (the kernels hash the cells
    with a cheaper one-multiply mix, see ``_fixed_kernels``)."""
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def _kernels():
    """The numba kernels, compiled on first use (never at import time)."""
    from grapes_hw.kernels import fixed as _fixed_kernels

    return _fixed_kernels


class FixedPointBackend:
    """Weights stored as ``bits``-bit signed integers (see the module docstring).

    ``pulses()`` counts integer cells actually changed by ``update``/``increment`` (nonzero
    integer increments after rounding and saturation); ``program`` and ``store`` are not
    counted. ``memory()`` reports ``bits`` per weight, packed.

    Besides the protocol it offers ``stored()``/``store(w)`` (used by noise models) and
    ``weight_range()`` (``w_max``, the reference scale of noise sigmas), plus ``q`` (the
    integer tensor), ``step`` and ``qmax``.
    """

    pulse_unit = "cells changed"
    """What ``pulses()`` counts: integer cells whose value an update changed."""
    abilities = Abilities(store=True, weight_range=True)

    def __init__(self, shape: tuple[int, int], params: FixedParams | None = None,
                 seed: int = 0):
        self.params = params or FixedParams()
        self.params.check()
        self.shape = (int(shape[0]), int(shape[1]))
        p = self.params
        self.bits = int(p.bits)
        self.qmax = (1 << (self.bits - 1)) - 1
        self.w_max = p.range_for(self.shape[1])
        self.step = self.w_max / self.qmax
        self.int_dtype = torch.int8 if self.bits <= 8 else torch.int16
        self.q = torch.zeros(self.shape, dtype=self.int_dtype)
        self.w = torch.zeros(self.shape, dtype=torch.float32)
        self._g = torch.empty(self.shape, dtype=torch.float32)
        self._unit = np.float32(1.0) if self.bits <= 8 else np.float64(1.0)
        self._stochastic = p.rounding == "stochastic"
        self.seed = int(seed)
        # Stochastic rounding draws from a counter-based hash (see _fixed_kernels): each write
        # gets a fresh 32-bit key derived from the seed and a write counter; no per-cell state.
        self._writes_done = 0
        self._seed_key = _mix32(_mix32(self.seed & 0xFFFFFFFF) ^ ((self.seed >> 32) & 0xFFFFFFFF))
        self._changed = 0
        # Views and typed constants for the kernels, made once (the write runs every step).
        self._ft = self._unit.dtype.type
        self._np = (self.q.numpy(), self.w.numpy())
        self._g_np = self._g.numpy()
        self._step32 = np.float32(self.step)
        self._hi = self._ft(self.qmax)

    # -- the fused write ---------------------------------------------------------------------
    def _write(self, g: torch.Tensor, scale: float, accumulate: bool) -> int:
        """Write ``g`` (scaled by ``scale``) into the cells, on the calling thread; returns the
        number of cells changed (``accumulate``) or 0 (``assign``)."""
        if g is self._g:
            g_np = self._g_np
        else:
            if not g.is_contiguous() or g.dtype != torch.float32:
                g = g.to(torch.float32).contiguous()
            g_np = g.numpy()
        k = _kernels()
        key = 0
        if self._stochastic:  # a fresh key per write (0x9E3779B9 odd: distinct per counter)
            self._writes_done += 1
            key = _mix32(self._seed_key + self._writes_done * 0x9E3779B9)
        kernel = k.accumulate if accumulate else k.assign
        n = kernel(self._np[0], self._np[1], g_np, self._ft(scale), self._unit,
                   self._step32, self._hi, self._stochastic, key)
        return int(n) if accumulate else 0

    def _quantize_from(self, w: torch.Tensor) -> None:
        check_shape("program", self.shape, w)
        if not bool(torch.isfinite(w).all()):  # NaN would round to the most negative code
            raise ValueError("program: the weights hold NaN or inf")
        self._write(w.detach().to(torch.float32), 1.0 / self.step, accumulate=False)

    # -- programming and reading -------------------------------------------------------------
    def program(self, w: torch.Tensor) -> None:
        """Write initial weights: rounded with the backend's rounding mode, saturated."""
        self._quantize_from(w)

    def stored(self) -> torch.Tensor:
        """The stored weights ``q * step`` (float32 view of the shadow; do not modify)."""
        return self.w

    def store(self, w: torch.Tensor) -> None:
        """Set the stored weights to ``w`` as the format allows (rounded, saturated); not
        counted in ``pulses()``."""
        self._quantize_from(w)

    def weight_range(self) -> float:
        """``w_max``: the reference scale for noise sigmas."""
        return self.w_max

    def read(self) -> torch.Tensor:
        return self.w

    def abs_sums(self, dim: int, ideal: bool = False) -> torch.Tensor:
        """Exact integer L1 sums of rows/columns of ``q``, times ``step``."""
        s = self.q.abs().sum(dim=dim, dtype=torch.int64)
        return s.to(torch.float64).mul_(self.step).to(torch.float32)

    # -- compute -----------------------------------------------------------------------------
    def _dac(self, x: torch.Tensor) -> torch.Tensor:
        b = self.params.dac_bits
        return x if b is None else quantize_symmetric(x, b)

    def _adc(self, d: torch.Tensor) -> torch.Tensor:
        b = self.params.adc_bits
        return d if b is None else quantize_symmetric(d, b)

    def _w_as(self, dtype: torch.dtype) -> torch.Tensor:
        return self.w if dtype == torch.float32 else self.w.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._dac(x)
        return x @ self._w_as(x.dtype).T

    def forward_inference(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def backward(self, delta: torch.Tensor) -> torch.Tensor:
        delta = self._adc(delta)
        return delta @ self._w_as(delta.dtype)

    # -- writes ------------------------------------------------------------------------------
    def update(self, x: torch.Tensor, delta: torch.Tensor, lr: float) -> None:
        """``W <- W - lr/B * delta^T x``, rounded and saturated in one fused pass."""
        check_update(self.shape, x, delta)
        x = self._dac(x)
        delta = self._adc(delta)
        scale = -lr / (x.shape[0] * self.step)
        if x.dtype == torch.float32 and delta.dtype == torch.float32:
            torch.mm(delta.T, x, out=self._g)
            self._changed += self._write(self._g, scale, accumulate=True)
        else:
            self._changed += self._write(delta.T @ x, scale, accumulate=True)

    def increment(self, dw: torch.Tensor) -> None:
        """``W <- W + dw``, rounded and saturated."""
        check_shape("increment", self.shape, dw)
        self._changed += self._write(dw, 1.0 / self.step, accumulate=True)

    # -- cost --------------------------------------------------------------------------------
    def memory(self) -> MemoryReport:
        n = self.q.numel()
        return MemoryReport(n_weights=n, bits_per_weight=self.bits,
                            digital_bytes=(n * self.bits + 7) // 8, device_count=0)

    def pulses(self) -> int:
        return self._changed

    def write_stats(self) -> dict:
        """Device-state counters of analog backends; a digital store has none."""
        return {}


def make_fixed(shape, params, seed):
    """Factory for ``backend = "fixed"`` device models."""
    return FixedPointBackend(shape, params, seed=seed)


class VelocityFormat:
    """Optimizer state (momentum velocity) held in ``bits``-bit fixed point.

    Range: block floating point with one power-of-two scale per tensor, re-chosen at every
    step from the tensor's largest magnitude: ``step = 2**(ceil(log2(max|v|)) - (bits - 1))``,
    integers in ``[-(2**(bits-1)-1), 2**(bits-1)-1]``. The scale follows lr * |gradient| as
    it changes, so nothing needs tuning and the velocity never overflows (the largest
    element may saturate by at most one LSB); the per-tensor exponent (one small integer per
    layer) is not counted in the memory report. ``rounding``: ``nearest`` or ``stochastic``
    (unbiased, seeded by ``seed``).
    """

    def __init__(self, bits: int, rounding: Rounding = "nearest", seed: int = 0):
        if not 2 <= int(bits) <= 32:
            raise ValueError(f"velocity bits must be in 2..32, got {bits}")
        if rounding not in ("nearest", "stochastic"):
            raise ValueError(f"velocity rounding must be nearest or stochastic, got {rounding!r}")
        self.bits = int(bits)
        self.qmax = float((1 << (self.bits - 1)) - 1)
        self.rounding = rounding
        self.generator = torch.Generator().manual_seed(int(seed))

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        top = float(v.abs().max()) if v.numel() else 0.0
        if not math.isfinite(top) or top == 0.0:
            return v
        step = 2.0 ** (math.ceil(math.log2(top)) - (self.bits - 1))
        v.div_(step)
        if self.rounding == "stochastic":
            v.add_(torch.rand(v.shape, generator=self.generator, dtype=v.dtype)).floor_()
        else:
            v.round_()
        return v.clamp_(-self.qmax, self.qmax).mul_(step)


__all__ = ["FixedParams", "FixedPointBackend", "VelocityFormat", "make_fixed",
           "quantize_symmetric"]
