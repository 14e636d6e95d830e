"""Spiking neural units (SNU, sSNU) as pure functions: the parameters, rate coding, the
unit's output and surrogate gradient, and one step ``snu_step(...) -> (s, y)``
(Wozniak et al., Nature Machine Intelligence 2020; wiring in ``grapes_hw.models.snu``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from grapes_hw.config import require

RECORDED_BEFORE = {"center_output": False}
"""The value of each ``SNUParams`` field added after results were first recorded, as runs
made before it existed behaved: a record without the field matches only this value (the
sweep's stale check, ``studies.keys``)."""


@dataclass
class SNUParams:
    """Spiking-unit settings (``TrainConfig.extra["snu"]``, all optional)."""

    decay: float = 0.8
    """Membrane decay l(tau) per step, in [0, 1)."""
    threshold: float | None = None
    """Initial threshold: the bias b starts at ``-threshold`` (> 0). None: 1 for the SNU,
    3 for the sSNU (whose sigmoid never reaches 0: with b = -1 every unit outputs >= 0.27,
    and a unit's state input is then dominated by 0.27 times the sum of its weight row; at
    He init 4 of 10 output units have a negative row sum and a ReLU state that is 0 for
    every image, and training silences the others within a few steps, even at lr 0.005;
    b = -3 keeps the resting output at 0.05, with ``init_gain`` 3 to bring deeper states up
    to the threshold)."""
    train_threshold: bool = True
    """Train the bias b (digital, like the weights' optimizer)."""
    min_threshold: float = 0.1
    """After every bias update ``b`` is clipped to ``<= -min_threshold``: the threshold stays
    positive (a bias >= 0 makes an SNU, whose ReLU state is >= 0, spike at every step
    whatever its input). 0 allows b up to 0."""
    surrogate_slope: float = 1.0
    """k of the sigmoid relaxation sigma(k z) whose derivative replaces the step's (SNU)."""
    input_rate: float = 1.0
    """Spike probability per step of a pixel of intensity 1, in (0, 1]."""
    output_g: str = "identity"
    """``g`` of the output layer: ``identity`` (its state may go negative; the gradient always
    reaches its weights) or ``relu`` (as the hidden layers: an output unit whose state input
    is <= 0 for every image gets no gradient again, and its class is never predicted)."""
    init_gain: float | None = None
    """Layers after the first (fed by SNU/sSNU outputs) start from He-uniform weights times
    this. None: 1 for the SNU (0/1 spikes, like the rate-coded input), 3 for the sSNU (its
    outputs are soft and mostly near sigmoid(b), so with gain 1 the states of deeper layers
    stay far below the threshold: max state 4.5, 2.2, 1.0, 0.36 layer by layer)."""
    center_output: bool | None = None
    """Start the output layer's weight rows at zero mean (the He-uniform draws minus each
    row's mean). None: True for the sSNU, False for the SNU. An sSNU output unit's state
    starts at its row sum times the mean hidden output (~0.11) accumulated over the steps,
    so the uncentred rows spread the output units' resting ``s + b`` from -1.5 to -10
    (digits, 2 x 256, seed 1); a unit below about -7 has a sigmoid slope under 1e-3, gets
    no gradient and its class is never predicted: seeds 1 and 2 stalled at 0.78 and 0.86
    test accuracy with classes 1, 2 (seed 1) never predicted. Centred rows halve the spread
    (-2.1 to -6.1 there, the lowest unit's slope 50x larger) and every seed trains (5 seeds
    x SGD/GRAPES, 20 epochs: 0.958-0.976)."""
    readout_scale: float | None = 10.0
    """logits = readout_scale * output rate (a rate of 1 for one class, 0 for the others
    gives a logit gap of ``readout_scale``); None: the training ``time_steps`` (the spike
    counts; larger updates, see ``grapes_hw.models.snu``)."""

    def resolved(self, soft: bool) -> SNUParams:
        """A copy with the model-dependent defaults (None) filled in for an SNU
        (``soft=False``) or an sSNU: what a run records as ``config.snu``."""
        out = replace(self)
        if out.threshold is None:
            out.threshold = 3.0 if soft else 1.0
        if out.init_gain is None:
            out.init_gain = 3.0 if soft else 1.0
        if out.center_output is None:
            out.center_output = soft
        return out

    def check(self) -> None:
        require(0.0 <= self.decay < 1.0, "snu.decay", f"got {self.decay}; must be in [0, 1)")
        require(self.threshold is None or self.threshold > 0, "snu.threshold",
                f"got {self.threshold}; must be > 0 (or unset)")
        require(self.min_threshold >= 0, "snu.min_threshold",
                f"got {self.min_threshold}; must be >= 0")
        require(self.threshold is None or self.threshold >= self.min_threshold,
                "snu.threshold", f"got {self.threshold}; must be >= snu.min_threshold "
                                 f"({self.min_threshold})")
        require(self.surrogate_slope > 0, "snu.surrogate_slope",
                f"got {self.surrogate_slope}; must be > 0")
        require(0.0 < self.input_rate <= 1.0, "snu.input_rate",
                f"got {self.input_rate}; must be in (0, 1]")
        require(self.readout_scale is None or self.readout_scale > 0, "snu.readout_scale",
                f"got {self.readout_scale}; must be > 0 (or unset)")
        require(self.output_g in ("identity", "relu"), "snu.output_g",
                f"got {self.output_g!r}; allowed values: identity, relu")
        require(self.init_gain is None or self.init_gain > 0, "snu.init_gain",
                f"got {self.init_gain}; must be > 0 (or unset)")


# ---- the unit --------------------------------------------------------------------------------
def rate_code(x: torch.Tensor, steps: int, generator: torch.Generator,
              rate: float = 1.0) -> torch.Tensor:
    """Bernoulli rate code of images ``x`` (B, n) in [0, 1]: spikes (steps, B, n) in {0, 1}."""
    p = (x * rate).clamp(0.0, 1.0)
    u = torch.rand((steps, *x.shape), generator=generator, dtype=torch.float32)
    return (u < p.to(torch.float32)).to(x.dtype)


def h_out(z: torch.Tensor, soft: bool) -> torch.Tensor:
    """Output function: step (spike iff z > 0) for the SNU, sigmoid for the sSNU."""
    return torch.sigmoid(z) if soft else (z > 0).to(z.dtype)


def h_grad(z: torch.Tensor, slope: float = 1.0) -> torch.Tensor:
    """d/dz sigma(k z) = k sigma(k z) (1 - sigma(k z)): the sSNU's exact derivative and the
    SNU's surrogate (k = ``slope``; the sSNU uses k = 1)."""
    s = torch.sigmoid(z * slope)
    return s.mul_(1.0 - s).mul_(slope)


def snu_step(a: torch.Tensor, s_prev: torch.Tensor, y_prev: torch.Tensor, b: torch.Tensor,
             decay: float, soft: bool,
             relu: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step: returns (u, s, y) with u the state input before ``g`` (ReLU, or the identity
    with ``relu=False``)."""
    u = a + decay * s_prev * (1.0 - y_prev)
    s = torch.relu(u) if relu else u
    return u, s, h_out(s + b, soft)


__all__ = ["RECORDED_BEFORE", "SNUParams", "rate_code", "h_out", "h_grad", "snu_step"]
