"""The weight-backend protocol: what a crossbar (or any weight store) does.

A backend holds one layer's weight matrix ``W`` of shape ``(n_out, n_in)`` (rows are the
postsynaptic nodes) and offers the operations an in-memory-computing array offers:

* ``forward(x)``: ``x @ W.T`` for a batch ``x`` of shape ``(B, n_in)`` (the array's MVM);
* ``backward(delta)``: ``delta @ W`` for ``delta`` of shape ``(B, n_out)`` (transposed MVM);
* ``update(x, delta, lr)``: the native rank-B outer-product update
  ``W <- W - lr / B * delta.T @ x`` (on an analog tile: coincident pulse trains);
* ``increment(dw)``: add an arbitrary digital matrix ``dw`` to ``W`` through the device's
  write path (used by optimizers that keep digital state, e.g. momentum's velocity);
* ``read()``: the weights as the hardware can read them (noise, quantisation included);
* ``abs_sums(dim, ideal=False)``: the L1 norms of rows (``dim=1``) or columns (``dim=0``)
  of what ``read()`` returns, the one statistic GRAPES needs (one value per node: a crossbar
  periphery can accumulate it); ``ideal=True`` uses the stored weights without read
  non-idealities, a simulator-only comparison view;
* ``program(w)``: write an initial weight matrix (programming noise applies here);
* ``memory()`` and ``pulses()``: cost accounting.

* ``forward_inference(x)``: the MVM at test time (analog inference tiles apply drift and its
  compensation there; everywhere else it is ``forward``);
* ``write_stats()``: cumulative device-state counters (analog: pulsed writes, write-verify
  repeats, devices near saturation; ``{}`` for digital stores).

Optional abilities are *declared*, never guessed: every backend has ``abilities``, an
``Abilities`` record saying which optional methods it has:

* ``store``: ``stored()`` (the clean stored weights as a float tensor of ``shape``, no read
  noise; may be the backend's own tensor, so callers must not modify it) and ``store(w)``
  (set the stored weights to ``w`` as far as the format allows, without counting
  ``pulses()``); the noise models of ``grapes_hw.backends.noise`` need them;
* ``weight_range``: ``weight_range()``, the reference scale of noise sigmas (fixed point:
  ``w_max``); without it the noise model uses the layer's max |W| right after ``program()``;
* ``drift``: ``program_and_drift(t_seconds, compensation)`` (analog inference tiles);
* ``exact_read``: ``read()`` returns the backend's own stored tensor (no copy, no read
  non-idealities), so statistics of it may be computed in place.

Learning rules never reach into a backend's internals and backends never know the rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class Abilities:
    """The optional abilities a backend declares (module docstring)."""

    store: bool = False
    """``stored()`` and ``store(w)``."""
    weight_range: bool = False
    """``weight_range()``: the reference scale of noise sigmas."""
    drift: bool = False
    """``program_and_drift(t_seconds, compensation)``: inference programming and drift."""
    exact_read: bool = False
    """``read()`` returns the backend's own stored tensor."""


@dataclass(frozen=True)
class MemoryReport:
    """What a backend's weight storage costs."""

    n_weights: int
    """Number of stored weights (devices or memory cells per weight are not counted here)."""
    bits_per_weight: float
    """Bits of storage per weight (32 for float32; ``bits`` for fixed point; for analog tiles
    the equivalent digital precision is not defined and 0 is reported)."""
    digital_bytes: int
    """Bytes of digital memory the backend keeps (weights in digital formats, biases)."""
    device_count: int
    """Number of analog devices (conductances) used, 0 for digital backends."""

    def to_dict(self) -> dict:
        return {
            "n_weights": self.n_weights,
            "bits_per_weight": self.bits_per_weight,
            "digital_bytes": self.digital_bytes,
            "device_count": self.device_count,
        }


def check_update(shape: tuple[int, int], x: torch.Tensor, delta: torch.Tensor) -> None:
    """``update(x, delta, lr)``'s inputs fit a ``(n_out, n_in)`` array: ``x`` is
    ``(B, n_in)`` and ``delta`` ``(B, n_out)``. Without the check a wrong width can write
    the wrong cells (an ``out=`` buffer resized in place) instead of failing."""
    if (x.dim() != 2 or delta.dim() != 2 or x.shape[0] != delta.shape[0]
            or x.shape[1] != shape[1] or delta.shape[1] != shape[0]):
        raise ValueError(f"update: expected x of shape (B, {shape[1]}) and delta of shape "
                         f"(B, {shape[0]}), got {tuple(x.shape)} and {tuple(delta.shape)}")


def check_shape(what: str, shape: tuple[int, int], w: torch.Tensor) -> None:
    """A whole-matrix write (``program``, ``store``, ``increment``) has the array's shape:
    no silent broadcasting of a row or a scalar over every weight."""
    if tuple(w.shape) != tuple(shape):
        raise ValueError(f"{what}: expected shape {tuple(shape)}, got {tuple(w.shape)}")


@runtime_checkable
class WeightBackend(Protocol):
    """Protocol every weight backend implements (see the module docstring)."""

    shape: tuple[int, int]
    """``(n_out, n_in)``."""
    abilities: Abilities
    """Which optional methods the backend has."""
    pulse_unit: str
    """What ``pulses()`` counts (``writes``, ``cells changed``, ...)."""

    def program(self, w: torch.Tensor) -> None: ...

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_inference(self, x: torch.Tensor) -> torch.Tensor: ...

    def backward(self, delta: torch.Tensor) -> torch.Tensor: ...

    def update(self, x: torch.Tensor, delta: torch.Tensor, lr: float) -> None: ...

    def increment(self, dw: torch.Tensor) -> None: ...

    def read(self) -> torch.Tensor: ...

    def abs_sums(self, dim: int, ideal: bool = False) -> torch.Tensor: ...

    def memory(self) -> MemoryReport: ...

    def pulses(self) -> int: ...

    def write_stats(self) -> dict: ...
