"""Ideal floating-point weights: the software baseline every other backend is compared to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from grapes_hw.backends.base import Abilities, MemoryReport, check_shape, check_update
from grapes_hw.config import require
from grapes_hw.kernels import step as _step_kernels

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class FloatParams:
    """Parameters of the ideal floating-point backend (TOML table ``[float]``)."""

    dtype: Literal["float32", "float64"] = "float32"
    """Storage and compute precision of the weights (float64 is for exact gradient checks)."""

    def check(self) -> None:
        require(self.dtype in _DTYPES, "dtype",
                f"got {self.dtype!r}; allowed values: {', '.join(_DTYPES)}")


class FloatBackend:
    """Weights in a dense float tensor; every operation is exact in that precision.

    ``update`` is one fused in-place ``addmm`` (``W -= lr/B * delta.T @ x``), so no
    temporary gradient matrix is allocated; ``increment`` adds a digital matrix in place.
    Each weight written counts as one "write" in ``pulses()`` so digital and analog costs can
    be put side by side (a digital SRAM write per weight per update).
    """

    abilities = Abilities(store=True, exact_read=True)
    """``read()`` is the stored tensor itself (see ``backends/base.py``)."""
    pulse_unit = "writes"
    """What ``pulses()`` counts: every weight written by each update (digital writes)."""

    def __init__(self, shape: tuple[int, int], params: FloatParams | None = None):
        self.params = params or FloatParams()
        self.params.check()
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = _DTYPES[self.params.dtype]
        self.w = torch.zeros(self.shape, dtype=self.dtype)
        self._writes = 0

    # -- programming and reading -----------------------------------------------------------
    def program(self, w: torch.Tensor) -> None:
        check_shape("program", self.shape, w)
        self.w.copy_(w)

    def read(self) -> torch.Tensor:
        return self.w

    def stored(self) -> torch.Tensor:
        """The stored weights (the tensor itself: do not modify; optional protocol method)."""
        return self.w

    def store(self, w: torch.Tensor) -> None:
        """Set the stored weights (not counted as writes; optional protocol method)."""
        check_shape("store", self.shape, w)
        self.w.copy_(w)

    def abs_sums(self, dim: int, ideal: bool = False) -> torch.Tensor:
        # Rows (dim=1): the numba ``row_abs_sums`` of ``grapes_hw.kernels.step`` (part of the
        # bundle that makes a GRAPES epoch 1.13-1.16x faster, benchmarks/README.md). Columns
        # (DFA) and what the kernel does not take: abs().sum(), 1.14-1.25x faster in a GRAPES
        # epoch than linalg.vector_norm (ord=1).
        if dim == 1:
            out = _step_kernels.row_abs_sums(self.w)
            if out is not None:
                return out
        return self.w.abs().sum(dim)

    # -- compute -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w.T

    def forward_inference(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def backward(self, delta: torch.Tensor) -> torch.Tensor:
        return delta @ self.w

    # -- writes ------------------------------------------------------------------------------
    def update(self, x: torch.Tensor, delta: torch.Tensor, lr: float) -> None:
        check_update(self.shape, x, delta)
        self.w.addmm_(delta.T, x, alpha=-lr / x.shape[0])
        self._writes += self.w.numel()

    def increment(self, dw: torch.Tensor) -> None:
        check_shape("increment", self.shape, dw)
        self.w.add_(dw)
        self._writes += self.w.numel()

    # -- cost --------------------------------------------------------------------------------
    def memory(self) -> MemoryReport:
        bits = torch.finfo(self.dtype).bits
        return MemoryReport(
            n_weights=self.w.numel(),
            bits_per_weight=bits,
            digital_bytes=self.w.numel() * bits // 8,
            device_count=0,
        )

    def pulses(self) -> int:
        return self._writes

    def write_stats(self) -> dict:
        """Device-state counters of analog backends; a digital store has none."""
        return {}
