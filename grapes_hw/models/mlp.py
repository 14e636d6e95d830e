"""Layers whose weights live in a backend, and the network that stacks them.

``HWLinear`` holds one weight backend (and optionally a bias, kept as a digital float
column driven by a constant-1 input, so optimizers treat it exactly like weights).
``Network`` stacks them with ReLU or tanh hidden units and a softmax output; its forward
pass keeps what credit assignment needs (each layer's input and hidden outputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from grapes_hw.backends.base import WeightBackend
from grapes_hw.backends.float_backend import FloatBackend, FloatParams
from grapes_hw.kernels import step as _step_kernels

Activation = Literal["relu", "tanh"]


class HWLinear:
    """A fully connected layer ``a = x W^T (+ b)`` whose ``W`` lives in ``backend``."""

    def __init__(self, backend: WeightBackend, bias: bool = False):
        self.backend = backend
        self.shape = backend.shape
        self.bias: FloatBackend | None = None
        if bias:
            self.bias = FloatBackend((self.shape[0], 1), FloatParams())

    def forward(self, x: torch.Tensor, train: bool = True) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.shape[1] or not x.is_floating_point():
            raise ValueError(f"HWLinear: expected a floating-point input of shape (B, "
                             f"{self.shape[1]}), got {x.dtype} {tuple(x.shape)}")
        if train:
            a = self.backend.forward(x)
        else:  # the test-time MVM (analog inference tiles: drift and compensation apply)
            a = self.backend.forward_inference(x)
        if self.bias is not None:
            a = a + self.bias.w[:, 0].to(a.dtype)
        return a


@dataclass
class ForwardCache:
    """What one training forward pass leaves for the backward pass."""

    inputs: list[torch.Tensor] = field(default_factory=list)
    """``inputs[l]`` is layer l's input h^(l-1) (the data for l = 0)."""
    keep: list[torch.Tensor | None] = field(default_factory=list)
    """Per hidden layer: the dropout keep-mask over nodes (1 = kept), or None."""


class Network:
    """A stack of ``HWLinear`` layers: hidden ReLU/tanh, softmax cross-entropy output."""

    def __init__(self, layers: list[HWLinear], activation: Activation = "relu",
                 dropout: float = 0.0, generator: torch.Generator | None = None):
        if activation not in ("relu", "tanh"):
            raise ValueError(f"activation must be relu or tanh, got {activation!r}")
        self.layers = layers
        self.activation = activation
        self.dropout = float(dropout)
        self.generator = generator or torch.Generator().manual_seed(0)

    @property
    def n_hidden(self) -> int:
        return len(self.layers) - 1

    def _act(self, a: torch.Tensor) -> torch.Tensor:
        return a.clamp_(min=0) if self.activation == "relu" else a.tanh_()

    def forward(self, x: torch.Tensor, train: bool = False,
                cache: ForwardCache | None = None) -> torch.Tensor:
        """Logits for ``x`` (B, n_in). With ``train`` and a cache, dropout applies and the
        layer inputs are stored for the backward pass."""
        h = x
        if cache is not None:
            cache.inputs.clear()
            cache.keep.clear()
        for i, layer in enumerate(self.layers):
            if cache is not None:
                cache.inputs.append(h)
            a = layer.forward(h, train)
            if i == len(self.layers) - 1:
                return a
            h = self._act(a)
            keep = None
            if train and self.dropout > 0:
                # One node mask per minibatch: dropped units' rows are masked (GRAPES.md).
                u = torch.rand(h.shape[1], generator=self.generator)
                keep = (u >= self.dropout).to(h.dtype)
                h = h.mul_(keep / (1.0 - self.dropout))
            if cache is not None:
                cache.keep.append(keep)
        raise RuntimeError("network has no layers")

    def activation_grad_(self, g: torch.Tensor, h: torch.Tensor,
                         keep: torch.Tensor | None,
                         scale: torch.Tensor | None = None) -> torch.Tensor:
        """In place: ``g * f'(a) (* scale)`` given the layer's output ``h = f(a)`` (after
        dropout). ``scale`` is a per-node factor (GRAPES' m). Without dropout, contiguous CPU
        float tensors go through the numba ``act_grad_scale`` (``grapes_hw.kernels.step``)."""
        if keep is None and _step_kernels.ENABLED:
            s = scale.to(g.dtype) if scale is not None else None
            if _step_kernels.activation_grad(g, h, self.activation == "relu", s) is not None:
                return g
        if self.activation == "relu":
            g.mul_(h > 0)
        else:
            hh = h if keep is None else h * (1.0 - self.dropout)
            g.mul_(1.0 - hh * hh)
        if keep is not None:
            g.mul_(keep / (1.0 - self.dropout))
        if scale is not None:
            g.mul_(scale.to(g.dtype))
        return g

    def predict(self, x: torch.Tensor, batch: int = 2048) -> torch.Tensor:
        out = []
        for s in range(0, x.shape[0], batch):
            out.append(self.forward(x[s:s + batch]).argmax(1))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)

    def backends(self) -> list[WeightBackend]:
        return [layer.backend for layer in self.layers]
