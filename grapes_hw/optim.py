"""Optimizers: turn (input, error) pairs into writes on a backend.

An optimizer never sees a backend's internals: plain SGD hands the minibatch to the
backend's native rank-B update (``backend.update``), which on a crossbar is the pulsed outer
product, so it keeps no state. Optimizers with state (momentum, Nesterov, RMSprop, Adam)
form the gradient ``g = delta^T x / B`` digitally, keep their buffers in digital memory and
write the resulting step through ``backend.increment``. ``state_bytes()`` reports that
memory, at the precision it is held in.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Literal

import torch

OptimizerName = Literal["sgd", "momentum", "nag", "rmsprop", "adam"]


def gradient(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Minibatch-mean weight gradient ``delta^T x / B`` (shape n_out x n_in)."""
    return (delta.T @ x).div_(x.shape[0])


class SGD:
    """Plain SGD: ``W <- W - lr * delta^T x / B`` through the backend's native update."""

    name = "sgd"

    def step(self, key: Hashable, backend, x: torch.Tensor, delta: torch.Tensor, lr: float) -> None:
        backend.update(x, delta, lr)

    def state_bytes(self) -> int:
        return 0


class Momentum:
    """Classical momentum ``v <- gamma v + lr g; W <- W - v`` or Nesterov (``nesterov``).

    Nesterov uses the Sutskever form torch uses (``W <- W - (lr g + gamma v)`` after the
    velocity update), so the stored weights are the look-ahead weights: GRAPES factors taken
    from them are the look-ahead factors the spec asks for.

    ``state_format`` stores the velocity: ``None`` float32, or a callable that rounds a tensor
    to the digital format in place (set by the fixed-point module) with ``state_bits`` bits.
    """

    def __init__(self, gamma: float = 0.9, nesterov: bool = False,
                 state_format=None, state_bits: int = 32):
        self.gamma = float(gamma)
        self.nesterov = bool(nesterov)
        self.name = "nag" if nesterov else "momentum"
        self.velocity: dict[Hashable, torch.Tensor] = {}
        self.state_format = state_format
        self.state_bits = int(state_bits)

    def step(self, key: Hashable, backend, x: torch.Tensor, delta: torch.Tensor, lr: float) -> None:
        g = gradient(x, delta)
        v = self.velocity.get(key)
        if v is None:
            v = self.velocity[key] = torch.zeros_like(g)
        v.mul_(self.gamma).add_(g, alpha=lr)
        if self.state_format is not None:
            self.state_format(v)
        if self.nesterov:
            step = g.mul_(lr).add_(v, alpha=self.gamma)
        else:
            step = v
        backend.increment(-step)

    def state_bytes(self) -> int:
        return sum(v.numel() for v in self.velocity.values()) * self.state_bits // 8


def make_optimizer(name: str, momentum: float = 0.9, **kwargs):
    if name == "sgd":
        return SGD()
    if name == "momentum":
        return Momentum(momentum, nesterov=False, **kwargs)
    if name == "nag":
        return Momentum(momentum, nesterov=True, **kwargs)
    from . import optim_adaptive  # RMSprop, Adam

    return optim_adaptive.make(name, **kwargs)
