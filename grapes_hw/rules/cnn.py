"""The learning rule of the convolutional network: backpropagation (or FA) through conv,
pooling and dense layers, GRAPES per filter, the optimizer step per layer (``CNNLearner``).
"""

from __future__ import annotations

import torch

from grapes_hw.errors import ConfigError
from grapes_hw.functional.grapes import GrapesParameters, modulation_factor
from grapes_hw.functional.init import he_uniform
from grapes_hw.functional.loss import softmax_error
from grapes_hw.models.cnn import CREDITS, CNNCache, ConvNet
from grapes_hw.rules.learner import FactorStats


class CNNLearner:
    """BP or FA + GRAPES + optimizer for a :class:`ConvNet` (the mapping and the rules are
    described in ``grapes_hw.models.cnn``)."""

    def __init__(self, net: ConvNet, grapes: GrapesParameters, optimizer, credit: str = "bp",
                 generator: torch.Generator | None = None):
        if credit not in CREDITS:
            raise ConfigError("credit", f"got {credit!r}; model 'cnn' supports "
                                        f"{', '.join(CREDITS)}")
        grapes.check()  # a GrapesParameters built in Python: mode, lower, bits in range
        self.net = net
        self.grapes = grapes
        self.optimizer = optimizer
        self.credit = credit
        g = generator or torch.Generator().manual_seed(0)
        # feedback[l] stands in for layer l's weights in the error layer l sends down (FA).
        self.feedback: list[torch.Tensor | None] = [None] * len(net.layers)
        if credit == "fa":
            for l in range(1, len(net.layers)):
                self.feedback[l] = he_uniform(net.layers[l].shape, g)
        self.cache = CNNCache()
        self.last_factors: list[torch.Tensor | None] = []
        self.stats = FactorStats(net.n_hidden, grapes.mode)

    def state_bytes(self) -> int:
        """Digital memory of the feedback weights (FA)."""
        return sum(b.numel() * b.element_size() for b in self.feedback if b is not None)

    def importance(self, l: int) -> torch.Tensor:
        """Node importance of hidden layer ``l``: the L1 norms of its rows (for a conv layer
        one per filter)."""
        return self.net.layers[l].backend.abs_sums(1, ideal=self.grapes.ideal_read)

    def factors(self) -> list[torch.Tensor | None]:
        """GRAPES factor m^l per hidden layer (conv layers: one per output channel)."""
        if self.grapes.mode == "off":
            return [None] * self.net.n_hidden
        return [modulation_factor(self.importance(l), self.grapes.lower, self.grapes.bits)
                for l in range(self.net.n_hidden)]

    # -- the backward pass, layer by layer ------------------------------------------------------
    def _send_down(self, l: int, delta: torch.Tensor) -> torch.Tensor:
        """The error layer ``l`` sends to the output of layer ``l - 1`` (before its pooling
        backward and f')."""
        net, cache, nc = self.net, self.cache, len(self.net.convs)
        fb = self.feedback[l]
        if l < nc:
            return net.convs[l].input_grad(delta, cache.conv[l], feedback=fb)
        layer = net.layers[l]
        g = layer.backend.backward(delta) if fb is None else delta @ fb.to(delta.dtype)
        if l == nc:  # the flatten boundary: back to the last conv layer's pooled map
            g = g.reshape(cache.pooled_shape)
        return g

    def _delta(self, l: int, g: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        """Hidden layer ``l``'s error from ``g`` arriving at its output: pooling backward,
        f', and the propagating GRAPES factor ``scale`` (per node / channel)."""
        net, cache, nc = self.net, self.cache, len(self.net.convs)
        if l < nc:
            return net.pools[l].backward(g, cache.pools[l], scale,
                                         channels_last=not net.convs[l].exact)
        h = cache.inputs[l - nc + 1]
        if not g.is_contiguous():
            g = g.contiguous()
        return net.head.activation_grad_(g, h, None, scale)

    def _update(self, l: int, delta: torch.Tensor, row_scale: torch.Tensor | None,
                lr: float) -> None:
        net, cache, nc = self.net, self.cache, len(self.net.convs)
        if l < nc:
            net.convs[l].step(self.optimizer, l, delta, cache.conv[l], lr, row_scale)
            return
        layer = net.layers[l]
        d = delta if row_scale is None else delta * row_scale.to(delta.dtype)
        x = cache.inputs[l - nc]
        self.optimizer.step(("w", l), layer.backend, x, d, lr)
        if layer.bias is not None:
            ones = torch.ones((x.shape[0], 1), dtype=d.dtype)
            self.optimizer.step(("b", l), layer.bias, ones, d, lr)

    def _backward(self, e: torch.Tensor, m: list[torch.Tensor | None]):
        """From the output layer down: yields ``(l, delta_l, local_l)``, layer l's error
        and its local GRAPES factor (None unless ``local``). The error layer l sends down
        is formed before the yield, so the caller may write layer l's weights then."""
        net, mode = self.net, self.grapes.mode
        delta = e  # the output layer: unmodulated
        for l in range(len(net.layers) - 1, -1, -1):
            g = self._send_down(l, delta) if l > 0 else None
            yield l, delta, (m[l] if mode == "local" and l < net.n_hidden else None)
            if g is None:
                return
            delta = self._delta(l - 1, g, m[l - 1] if mode == "propagating" else None)

    def errors(self, e: torch.Tensor, m: list[torch.Tensor | None]) -> list[torch.Tensor]:
        """The per-layer errors the updates use, in layer order (conv layers (B, C, H', W'),
        dense (B, n)), for the output error ``e`` of the last forward pass and factors ``m``:
        with ``local`` the hidden errors come scaled by their factor. No weight changes."""
        out: list = [None] * len(self.net.layers)
        for l, delta, local in self._backward(e, m):
            if local is not None:
                shape = (1, -1, 1, 1) if delta.dim() == 4 else (1, -1)
                delta = delta * local.to(delta.dtype).view(shape)
            out[l] = delta
        return out

    def step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> tuple[float, int]:
        """Train on one minibatch; returns (summed loss, number correct)."""
        logits = self.net.forward(x, train=True, cache=self.cache)
        e, loss, correct = softmax_error(logits, y)
        m = self.factors()  # from the weights before this minibatch's updates
        self.last_factors = m
        self.stats.add(m)
        for l, delta, local in self._backward(e, m):
            self._update(l, delta, local, lr)
        return loss, correct


__all__ = ["CNNLearner"]
