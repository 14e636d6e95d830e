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

Optional methods, needed by the noise models of ``grapes_hw.noise`` (``wrap_with_noise``):

* ``stored()``: the clean stored weights as a float tensor of ``shape`` (no read noise; may be
  the backend's own tensor, so callers must not modify it);
* ``store(w)``: set the stored weights to ``w`` as far as the format allows (a fixed-point
  backend rounds and saturates, an analog one programs), without counting ``pulses()``;
* ``weight_range()``: the reference scale of noise sigmas (fixed point: ``w_max``); without it
  the noise model uses the layer's max |W| right after ``program()``.

Optional attribute:

* ``exact_read``: True when ``read()`` returns the backend's own stored tensor (no copy, no
  read non-idealities), so statistics of ``read()`` such as ``abs_sums`` may be computed on it
  in place, fused with other work. Absent means False.

Learning rules never reach into a backend's internals and backends never know the rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


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


@runtime_checkable
class WeightBackend(Protocol):
    """Protocol every weight backend implements (see the module docstring)."""

    shape: tuple[int, int]
    """``(n_out, n_in)``."""

    def program(self, w: torch.Tensor) -> None: ...

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

    def backward(self, delta: torch.Tensor) -> torch.Tensor: ...

    def update(self, x: torch.Tensor, delta: torch.Tensor, lr: float) -> None: ...

    def increment(self, dw: torch.Tensor) -> None: ...

    def read(self) -> torch.Tensor: ...

    def abs_sums(self, dim: int, ideal: bool = False) -> torch.Tensor: ...

    def memory(self) -> MemoryReport: ...

    def pulses(self) -> int: ...
