"""A layer split over several analog arrays of at most ``tile_size`` rows and columns
(``SplitAnalogBackend``, after aihwkit's ``tiles/array.py``), and ``make_analog``, the
factory of the analog backend kind.
"""

from __future__ import annotations

from typing import Any

import torch

from grapes_hw.backends.analog.config import AnalogParams
from grapes_hw.backends.analog.tile import AnalogTileBackend
from grapes_hw.backends.base import Abilities, MemoryReport


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
