"""Device noise that composes with any weight backend (TOML table ``[noise]``).

``wrap_with_noise(backend, params, seed)`` returns a ``NoisyBackend``: the full weight-backend
protocol around any backend that also offers ``stored()`` (the clean stored weights as a
float tensor) and ``store(w)`` (set them, as the backend's format allows; see
``backends/base.py``). Sigmas are relative to a per-layer reference scale ``ref``:

* the backend's ``weight_range()`` if it has one (fixed point: ``w_max``; an analog backend:
  its largest weight magnitude);
* otherwise (float) the layer's max |W| right after ``program()`` (for He-uniform init, about
  the init limit ``sqrt(6 / n_in)``).

Models, all seeded (one ``torch.Generator`` per kind of noise, from ``seed``):

* ``read_sigma``: every read sees ``W + N``, ``N ~ N(0, (read_sigma * ref)^2)`` i.i.d., drawn
  fresh for every ``forward``, every ``backward`` and every ``read()`` (``read()`` returns
  ``inner.read() + N``, and GRAPES' ``abs_sums`` are taken from such a fresh read;
  ``abs_sums(..., ideal=True)`` passes to the inner backend's clean stored weights).
  ``forward(x) = inner.forward(x) + x @ N^T`` and ``backward(d) = inner.backward(d) + d @ N``,
  so the inner backend's own forward/backward (converters, analog effects) is kept and the read
  noise adds on top. Stored weights are not changed by reading.
* ``write_sigma``: every applied update is perturbed relative to itself: a weight whose
  stored value changed by ``dw`` in an ``update``/``increment`` ends at
  ``w + dw * write_sigma * xi``, ``xi ~ N(0, 1)`` fresh per weight and write (cycle-to-cycle
  variation proportional to the step; weights that were not changed get no noise). The
  result is stored back through ``store()``, so a fixed-point backend rounds it again with its
  own rounding (stochastic rounding keeps the noise unbiased; with nearest rounding noise
  under half a step is rounded away, as a digital store would).
* ``program_sigma``: once per ``program()``: ``W + N(0, (program_sigma * ref)^2)``, stored.
* ``stuck_fraction``, ``stuck_value``: a seeded random set of cells (each independently with
  probability ``stuck_fraction``) is stuck at ``0`` (``zero``), ``+ref`` (``max``), ``-ref``
  (``min``) or, per cell, at ``+ref`` or ``-ref`` with equal odds (``random_end``). Stuck cells
  are imposed at ``program()`` and re-imposed after every write, so they never change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from grapes_hw.backends.base import Abilities, MemoryReport
from grapes_hw.config import require

StuckValue = Literal["zero", "max", "min", "random_end"]


SIGMA_MAX = 10.0
"""The largest noise std accepted (1000% of the scale): far beyond any device, and far from
the float overflow of weights times a huge factor."""


@dataclass
class NoiseParams:
    """Noise model parameters (TOML table ``[noise]``); sigmas relative to the reference
    scale ``ref`` (see the module docstring: ``w_max`` for fixed point, the initial max |W|
    of the layer for float)."""

    read_sigma: float = 0.0
    """Std of the Gaussian added to every weight at every read (forward, backward,
    ``read()``), as a fraction of ``ref`` (dimensionless, >= 0; 0.05 = 5% of the range)."""
    write_sigma: float = 0.0
    """Std of the multiplicative error of every applied update: a change ``dw`` becomes
    ``dw * (1 + write_sigma * xi)`` (dimensionless fraction of the update, >= 0)."""
    program_sigma: float = 0.0
    """Std of the Gaussian added once when weights are programmed, as a fraction of ``ref``
    (dimensionless, >= 0)."""
    stuck_fraction: float = 0.0
    """Fraction of cells stuck at ``stuck_value`` (probability per cell, in [0, 1])."""
    stuck_value: StuckValue = "zero"
    """Where stuck cells sit: ``zero``, ``max`` (+ref), ``min`` (-ref) or ``random_end``
    (+ref or -ref, chosen per cell)."""

    def check(self) -> None:
        for name in ("read_sigma", "write_sigma", "program_sigma"):
            v = getattr(self, name)
            require(math.isfinite(v) and 0 <= v <= SIGMA_MAX, name,
                    f"got {v!r}; must be in [0, {SIGMA_MAX:g}] (a std relative to the "
                    "layer's scale: 0.1 is 10%)")
        require(math.isfinite(self.stuck_fraction) and 0 <= self.stuck_fraction <= 1,
                "stuck_fraction", f"got {self.stuck_fraction!r}; must be in [0, 1]")
        require(self.stuck_value in ("zero", "max", "min", "random_end"), "stuck_value",
                f"got {self.stuck_value!r}; allowed values: 'zero', 'max', 'min', 'random_end'")

    @property
    def active(self) -> bool:
        return bool(self.read_sigma or self.write_sigma or self.program_sigma
                    or self.stuck_fraction)


class NoisyBackend:
    """A weight backend with ``NoiseParams`` noise around ``inner`` (module docstring)."""

    def __init__(self, inner, params: NoiseParams, seed: int = 0):
        if not inner.abilities.store:
            raise TypeError(f"{type(inner).__name__} does not declare stored()/store(w) "
                            "(abilities.store), which noise models need (backends/base.py)")
        params.check()
        self.inner = inner
        self.noise = params
        self.shape = tuple(inner.shape)
        seed = int(seed)
        # One stream per kind of noise, so enabling one does not shift another's draws.
        self._g_read = torch.Generator().manual_seed(seed * 4 + 1_000_003)
        self._g_write = torch.Generator().manual_seed(seed * 4 + 2_000_003)
        self._g_prog = torch.Generator().manual_seed(seed * 4 + 3_000_017)
        self._g_stuck = torch.Generator().manual_seed(seed * 4 + 4_000_037)
        self._ref: float | None = None
        self._stuck_mask: torch.Tensor | None = None
        self._stuck_idx: torch.Tensor | None = None   # flat indices of the stuck cells
        self._stuck_sign: torch.Tensor | None = None  # per stuck cell: +-1 (random_end)
        self._stuck_vals: torch.Tensor | None = None
        if params.stuck_fraction > 0:
            u = torch.rand(self.shape, generator=self._g_stuck)
            self._stuck_mask = u < params.stuck_fraction
            self._stuck_idx = self._stuck_mask.view(-1).nonzero().view(-1)
            coin = torch.rand(self.shape, generator=self._g_stuck).view(-1)[self._stuck_idx]
            self._stuck_sign = torch.where(coin < 0.5, -1.0, 1.0)

    # -- reference scale and stuck cells ---------------------------------------------------
    def ref(self) -> float:
        """The reference scale of the sigmas (``weight_range()`` or max |W| at programming)."""
        if self.inner.abilities.weight_range:
            return float(self.inner.weight_range())
        if self._ref is None:
            self._ref = float(self.inner.stored().abs().max())
        return self._ref

    @property
    def stuck_mask(self) -> torch.Tensor | None:
        """Boolean mask of the stuck cells (None when none are configured)."""
        return self._stuck_mask

    def _impose_stuck(self) -> None:
        if self._stuck_idx is None or self._stuck_idx.numel() == 0:
            return
        if self._stuck_vals is None:
            r = self.ref()
            v = self.noise.stuck_value
            n = self._stuck_idx.numel()
            if v == "zero":
                self._stuck_vals = torch.zeros(n)
            elif v == "max":
                self._stuck_vals = torch.full((n,), r)
            elif v == "min":
                self._stuck_vals = torch.full((n,), -r)
            else:
                self._stuck_vals = self._stuck_sign * r
        w = self.inner.stored()
        vals = self._stuck_vals.to(w.dtype)
        if torch.equal(w.reshape(-1)[self._stuck_idx], vals):
            return
        w = w.clone()
        w.view(-1)[self._stuck_idx] = vals
        self.inner.store(w)
        # Keep the values as the format stores them (e.g. w_max on a fixed-point grid), so the
        # next check compares like with like and skips the store when nothing moved.
        self._stuck_vals = self.inner.stored().reshape(-1)[self._stuck_idx].clone()

    def _noise(self, sigma: float, gen: torch.Generator, dtype=torch.float32) -> torch.Tensor:
        return torch.randn(self.shape, generator=gen, dtype=dtype).mul_(sigma * self.ref())

    # -- programming and reading -------------------------------------------------------------
    def program(self, w: torch.Tensor) -> None:
        self.inner.program(w)
        if not self.inner.abilities.weight_range:
            self._ref = float(self.inner.stored().abs().max())
        self._stuck_vals = None
        p = self.noise
        if p.program_sigma > 0:
            s = self.inner.stored()
            self.inner.store(s + self._noise(p.program_sigma, self._g_prog, s.dtype))
        self._impose_stuck()

    def stored(self) -> torch.Tensor:
        return self.inner.stored()

    def store(self, w: torch.Tensor) -> None:
        self.inner.store(w)
        self._impose_stuck()

    def weight_range(self) -> float:
        return self.ref()

    @property
    def abilities(self) -> Abilities:
        """The inner backend's, with a reference scale for the sigmas always, and an exact
        read only without read noise (only then is ``read()`` the inner's own tensor)."""
        a = self.inner.abilities
        return Abilities(store=True, weight_range=True, drift=a.drift,
                         exact_read=self.noise.read_sigma == 0 and a.exact_read)

    def program_and_drift(self, t_seconds: float, compensation: bool | None = None) -> None:
        """The inner inference tile's programming and drift (``abilities.drift``)."""
        self.inner.program_and_drift(t_seconds, compensation)

    def read(self) -> torch.Tensor:
        s = self.inner.read()
        if self.noise.read_sigma > 0:
            return s + self._noise(self.noise.read_sigma, self._g_read, s.dtype)
        return s

    def abs_sums(self, dim: int, ideal: bool = False) -> torch.Tensor:
        if ideal or self.noise.read_sigma == 0:
            return self.inner.abs_sums(dim, ideal=ideal)
        return torch.linalg.vector_norm(self.read(), ord=1, dim=dim)

    # -- compute -----------------------------------------------------------------------------
    def _read_noisy(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``y`` (the inner MVM of ``x``) plus the MVM of ``x`` with a fresh read noise draw."""
        if self.noise.read_sigma > 0:
            n = self._noise(self.noise.read_sigma, self._g_read, x.dtype)
            y = y.addmm_(x, n.T) if y.dtype == x.dtype else y + x @ n.T
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._read_noisy(self.inner.forward(x), x)

    def forward_inference(self, x: torch.Tensor) -> torch.Tensor:
        """The inner backend's test-time MVM, with the same read noise as ``forward``."""
        return self._read_noisy(self.inner.forward_inference(x), x)

    def backward(self, delta: torch.Tensor) -> torch.Tensor:
        out = self.inner.backward(delta)
        if self.noise.read_sigma > 0:
            n = self._noise(self.noise.read_sigma, self._g_read, delta.dtype)
            out = out.addmm_(delta, n) if out.dtype == delta.dtype else out + delta @ n
        return out

    # -- writes ------------------------------------------------------------------------------
    def _write(self, apply) -> None:
        sigma = self.noise.write_sigma
        if sigma > 0:
            before = self.inner.stored().clone()
            apply()
            after = self.inner.stored()
            dw = after - before
            xi = torch.randn(self.shape, generator=self._g_write, dtype=dw.dtype)
            self.inner.store(after + dw.mul_(xi).mul_(sigma))
        else:
            apply()
        self._impose_stuck()

    def update(self, x: torch.Tensor, delta: torch.Tensor, lr: float) -> None:
        self._write(lambda: self.inner.update(x, delta, lr))

    def increment(self, dw: torch.Tensor) -> None:
        self._write(lambda: self.inner.increment(dw))

    # -- cost --------------------------------------------------------------------------------
    def memory(self) -> MemoryReport:
        return self.inner.memory()

    def pulses(self) -> int:
        return self.inner.pulses()

    def write_stats(self) -> dict:
        return self.inner.write_stats()

    @property
    def pulse_unit(self) -> str:
        """What ``pulses()`` counts: the inner backend's unit (noise adds no writes)."""
        return self.inner.pulse_unit



def wrap_with_noise(backend, noise: NoiseParams | None, seed: int = 0):
    """``backend`` with ``noise`` applied (``backend`` itself when ``noise`` is None)."""
    if noise is None:
        return backend
    return NoisyBackend(backend, noise, seed)


__all__ = ['NoiseParams', 'NoisyBackend', 'wrap_with_noise']
