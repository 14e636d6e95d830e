"""GRAPES modulation factors as pure functions (spec: ``../shared/GRAPES.md``).

GRAPES (Dellaferrera et al., Nature Communications 2022, arXiv:2104.11604) scales the error
of every hidden node by a factor computed from the layer's own weights::

    i_n = sum_j |W[n, j]|                      (node importance: row sums of |W|)
    m   = clip(2 * i / max_n i_n, lower, 2)    (lower = 1 by default, so 1 <= m <= 2)

With DFA the importance is grouped by presynaptic node: column sums of the next layer's |W|.
No state is kept between minibatches: ``m`` is recomputed from the weights each step.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

import torch

from grapes_hw.config import require

GrapesMode = Literal["off", "local", "propagating"]


@dataclass
class GrapesParameters:
    """How GRAPES modulates the hidden errors."""

    mode: GrapesMode = "off"
    """``off``; ``propagating`` (the paper's default: the factor enters the propagated error
    and compounds down the layers); ``local`` (only each layer's own update is scaled)."""
    lower: float | None = 1.0
    """Lower bound of m (the spec's clip). ``None`` leaves m unbounded below, 0 < m <= 2,
    which is the published FA/DFA reference behaviour."""
    bits: int | None = None
    """Hold m at this many bits, as a digital periphery would: 2**bits levels evenly spaced in
    [lower, 2] (bits=2 gives {1, 1.33, 1.67, 2}); ``None`` keeps full precision."""
    ideal_read: bool = False
    """Compute importance from the ideal stored weights instead of the hardware read (a
    comparison switch; GRAPES on hardware sees what ``read()`` returns)."""

    def check(self, names: dict[str, str] | None = None) -> None:
        """Errors name the field (``mode``, ``lower``, ``bits``), or the caller's name for it
        from ``names`` (``TrainConfig`` calls them ``grapes``, ``grapes_lower``, ...)."""
        from grapes_hw.config import check_types
        from grapes_hw.errors import ConfigError

        n = {"mode": "mode", "lower": "lower", "bits": "bits", "ideal_read": "ideal_read",
             **(names or {})}
        try:
            check_types(self)  # a bool for lower, 2.5 bits, ... (built in Python)
        except ConfigError as e:
            raise ConfigError(n.get(e.field, e.field), e.message) from None
        require(self.mode in ("off", "local", "propagating"), n["mode"],
                f"got {self.mode!r}; allowed values: off, local, propagating")
        if self.lower is not None:
            require(0.0 <= self.lower <= 2.0, n["lower"],
                    f"got {self.lower}; must be in [0, 2] (or none for unbounded)")
        if self.bits is not None:
            require(1 <= self.bits <= 16, n["bits"], f"got {self.bits}; allowed 1..16")


def importance_rows(w: torch.Tensor) -> torch.Tensor:
    """Node importance from the incoming weights: L1 norm of each row of ``w``."""
    return torch.linalg.vector_norm(w, ord=1, dim=1)


def importance_cols(w_next: torch.Tensor) -> torch.Tensor:
    """DFA importance: L1 norm of each column of the next layer's weights."""
    return torch.linalg.vector_norm(w_next, ord=1, dim=0)


def modulation_factor(importance: torch.Tensor, lower: float | None = 1.0,
                      bits: int | None = None) -> torch.Tensor:
    """``m = clip(2 i / max(i), lower, 2)``, optionally held at ``bits`` bits.

    Returns a new tensor (``importance`` is not modified). All-zero or non-finite importance
    (e.g. a layer of zeros) gives m = 1 everywhere rather than NaN.
    """
    if importance.numel() == 0:
        raise ValueError("modulation_factor: importance is empty (a layer without nodes)")
    if lower is not None and not 0.0 <= lower <= 2.0:  # NaN fails this too
        raise ValueError(f"modulation_factor: lower must be in [0, 2] or None, got {lower!r}")
    if bits is not None and not (isinstance(bits, numbers.Integral) and bits >= 1):
        raise ValueError(f"modulation_factor: bits must be an integer >= 1 or None, got "
                         f"{bits!r}")
    top = float(importance.max())
    if not math.isfinite(top) or top <= 0.0:
        return torch.ones_like(importance)
    m = importance.mul(2.0 / top)
    m.clamp_(min=lower, max=2.0)
    if bits is not None:
        lo = float(m.min()) if lower is None else lower  # unbounded: quantise on [min m, 2]
        levels = (1 << int(bits)) - 1
        if levels > 0 and lo < 2.0:
            step = (2.0 - lo) / levels
            m = torch.round((m - lo) / step).mul_(step).add_(lo)
    return m


def mean_factor(importances: list[torch.Tensor], lower: float | None = 1.0) -> float:
    """Mean of m over all hidden nodes: the paper's lr-matched SGD control multiplies the
    learning rate by this, taken at initialisation."""
    ms = [modulation_factor(i, lower) for i in importances]
    if not ms:
        return 1.0
    return float(torch.cat(ms).mean())
