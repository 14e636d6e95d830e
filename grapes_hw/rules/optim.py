"""Optimizers: turn (input, error) pairs into writes on a backend.

An optimizer never sees a backend's internals: plain SGD hands the minibatch to the
backend's native rank-B update (``backend.update``), which on a crossbar is the pulsed outer
product, so it keeps no state. Optimizers with state (momentum, Nesterov, RMSprop, Adam)
form the gradient ``g = delta^T x / B`` digitally, keep their buffers in digital memory and
write the resulting step through ``backend.increment``. ``state_bytes()`` reports that
memory, at the precision it is held in: ``state_bits`` per value when a digital format is
given, else the buffers' own dtype (4 bytes per value for float32, 8 for float64).

With GRAPES the learning rule hands every optimizer the *modulated* errors, so the modulated
gradient replaces the plain one (GRAPES.md, "With other optimizers"); nothing else changes.

RMSprop and Adam follow ``torch.optim`` step for step (single-tensor code path), so weight
trajectories agree with torch to rounding:

* RMSprop (``torch.optim.RMSprop(alpha=gamma, eps=eps)``)::

      v <- gamma v + (1 - gamma) g^2
      W <- W - lr * g / (sqrt(v) + eps)            # eps added OUTSIDE the square root

  defaults gamma = 0.9, eps = 1e-8 (the GRAPES paper's setting; torch's own default alpha is
  0.99). Optional torch-style ``momentum`` and ``centered`` variants are supported.
* Adam (``torch.optim.Adam(betas=(beta1, beta2), eps=eps)``)::

      m <- beta1 m + (1 - beta1) g ;  v <- beta2 v + (1 - beta2) g^2 ;  t <- t + 1
      W <- W - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

  defaults beta1 = 0.9, beta2 = 0.999, eps = 1e-8; the step counter is one 32-bit integer
  per layer, counted in ``state_bytes()``.

``state_format`` (optional) is a callable that rounds a state tensor in place to a digital
format (e.g. fixed point, supplied by the fixed-point module).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
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
                 state_format=None, state_bits: int | None = None):
        self.gamma = float(gamma)
        self.nesterov = bool(nesterov)
        self.name = "nag" if nesterov else "momentum"
        self.velocity: dict[Hashable, torch.Tensor] = {}
        self.state_format = state_format
        self.state_bits = None if state_bits is None else int(state_bits)

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
        return sum(_bytes(v, self.state_bits) for v in self.velocity.values())


def _bytes(t: torch.Tensor, bits: int | None) -> int:
    """Digital memory of a state buffer: ``bits`` per value, or its dtype's size."""
    return t.numel() * bits // 8 if bits is not None else t.numel() * t.element_size()


# ---- adaptive optimizers: RMSprop and Adam -----------------------------------------------
class _Adaptive:
    name = "?"
    n_buffers = 1

    def __init__(self, state_format: Callable[[torch.Tensor], object] | None = None,
                 state_bits: int | None = None):
        self.state_format = state_format
        self.state_bits = None if state_bits is None else int(state_bits)
        if self.state_bits is not None and self.state_bits < 1:
            raise ValueError(f"state_bits must be >= 1, got {state_bits}")
        self.state: dict[Hashable, dict[str, torch.Tensor]] = {}

    def _fmt(self, t: torch.Tensor) -> None:
        if self.state_format is not None:
            self.state_format(t)

    def state_bytes(self) -> int:
        return sum(_bytes(t, self.state_bits) for st in self.state.values()
                   for t in st.values()) + self._extra_bytes()

    def _extra_bytes(self) -> int:
        return 0


class RMSprop(_Adaptive):
    """RMSprop as in ``torch.optim.RMSprop`` (eps outside the square root)."""

    name = "rmsprop"

    def __init__(self, gamma: float = 0.9, eps: float = 1e-8, momentum: float = 0.0,
                 centered: bool = False, state_format=None, state_bits: int | None = None):
        super().__init__(state_format, state_bits)
        if not 0.0 <= gamma < 1.0:
            raise ValueError(f"RMSprop gamma must be in [0, 1), got {gamma}")
        if not eps > 0:
            raise ValueError(f"RMSprop eps must be > 0, got {eps}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"RMSprop momentum must be in [0, 1), got {momentum}")
        self.gamma = float(gamma)
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.centered = bool(centered)

    def step(self, key: Hashable, backend, x: torch.Tensor, delta: torch.Tensor, lr: float) -> None:
        g = gradient(x, delta)
        st = self.state.get(key)
        if st is None:
            st = self.state[key] = {"v": torch.zeros_like(g)}
            if self.centered:
                st["g_avg"] = torch.zeros_like(g)
            if self.momentum > 0:
                st["buf"] = torch.zeros_like(g)
        v = st["v"]
        v.mul_(self.gamma).addcmul_(g, g, value=1.0 - self.gamma)
        self._fmt(v)
        if self.centered:
            ga = st["g_avg"]
            ga.lerp_(g, 1.0 - self.gamma)
            self._fmt(ga)
            avg = v.addcmul(ga, ga, value=-1.0).sqrt_().add_(self.eps)
        else:
            avg = v.sqrt().add_(self.eps)
        if self.momentum > 0:
            buf = st["buf"]
            buf.mul_(self.momentum).addcdiv_(g, avg)
            self._fmt(buf)
            step = buf * lr
        else:
            step = g.div_(avg).mul_(lr)
        backend.increment(-step)


class Adam(_Adaptive):
    """Adam as in ``torch.optim.Adam`` (bias-corrected, eps outside the square root)."""

    name = "adam"

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 state_format=None, state_bits: int | None = None):
        super().__init__(state_format, state_bits)
        for nm, b in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"Adam {nm} must be in [0, 1), got {b}")
        if not eps > 0:
            raise ValueError(f"Adam eps must be > 0, got {eps}")
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.eps = float(eps)
        self.steps: dict[Hashable, int] = {}

    def step(self, key: Hashable, backend, x: torch.Tensor, delta: torch.Tensor, lr: float) -> None:
        g = gradient(x, delta)
        st = self.state.get(key)
        if st is None:
            st = self.state[key] = {"m": torch.zeros_like(g), "v": torch.zeros_like(g)}
        m, v = st["m"], st["v"]
        t = self.steps.get(key, 0) + 1
        self.steps[key] = t
        m.lerp_(g, 1.0 - self.beta1)
        v.mul_(self.beta2).addcmul_(g, g, value=1.0 - self.beta2)
        self._fmt(m)
        self._fmt(v)
        step_size = lr / (1.0 - self.beta1 ** t)
        denom = (v.sqrt() / math.sqrt(1.0 - self.beta2 ** t)).add_(self.eps)
        backend.increment(-(m / denom).mul_(step_size))

    def _extra_bytes(self) -> int:
        return 4 * len(self.steps)  # one 32-bit step counter per parameter tensor


def _make_adaptive(name: str, **kw):
    """Build ``rmsprop`` or ``adam``; keyword arguments are the class' (for RMSprop torch's
    name ``alpha`` is accepted for ``gamma``; for Adam ``betas=(b1, b2)`` too)."""
    if name == "rmsprop":
        if "alpha" in kw:
            kw["gamma"] = kw.pop("alpha")
        return RMSprop(**kw)
    if name == "adam":
        if "betas" in kw:
            kw["beta1"], kw["beta2"] = kw.pop("betas")
        return Adam(**kw)
    raise ValueError(f"optimizer must be one of sgd, momentum, nag, rmsprop, adam; got {name!r}")


def optimizer_options(name: str) -> tuple[str, ...]:
    """The keyword options optimizer ``name`` takes from ``TrainConfig.extra["optimizer"]``
    (its constructor's, plus torch's aliases; the digital state format is set by
    ``velocity_bits``, momentum's coefficient by ``momentum``)."""
    import inspect

    cls = {"rmsprop": RMSprop, "adam": Adam}.get(name)
    if cls is None:
        return ()
    own = [p for p in inspect.signature(cls.__init__).parameters
           if p not in ("self", "state_format", "state_bits")]
    return tuple(own) + {"rmsprop": ("alpha",), "adam": ("betas",)}[name]


def make_optimizer(name: str, momentum: float = 0.9, **kwargs):
    if name == "sgd":
        return SGD()
    if name == "momentum":
        return Momentum(momentum, nesterov=False, **kwargs)
    if name == "nag":
        return Momentum(momentum, nesterov=True, **kwargs)
    return _make_adaptive(name, **kwargs)
