"""The learning rule of the spiking network: BPTT through the SNU layers, GRAPES factors per
hidden layer, the optimizer step per layer (``SNULearner``).
"""

from __future__ import annotations

import torch

from grapes_hw.functional.grapes import GrapesParameters, modulation_factor
from grapes_hw.functional.loss import softmax_error
from grapes_hw.functional.snu import rate_code
from grapes_hw.models.snu import SNUNetwork
from grapes_hw.rules.learner import FactorStats


class SNULearner:
    """BPTT + GRAPES + optimizer for an :class:`SNUNetwork` (see ``grapes_hw.models.snu``)."""

    def __init__(self, net: SNUNetwork, grapes: GrapesParameters, optimizer, time_steps: int,
                 generator: torch.Generator | None = None, batch_size: int | None = None):
        grapes.check()  # a GrapesParameters built in Python: mode, lower, bits in range
        self.net = net
        self.grapes = grapes
        self.optimizer = optimizer
        self.time_steps = int(time_steps)
        self.batch_size = None if batch_size is None else int(batch_size)
        """Nominal minibatch size: a smaller batch's update is scaled by B / batch_size (None:
        every batch takes a full step)."""
        self.generator = generator or torch.Generator().manual_seed(0)
        self.last_factors: list[torch.Tensor | None] = []
        self.stats = FactorStats(net.n_hidden, grapes.mode)
        self.last_grads: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def readout_scale(self) -> float:
        rs = self.net.params.readout_scale
        return float(self.time_steps if rs is None else rs)

    def factors(self) -> list[torch.Tensor | None]:
        if self.grapes.mode == "off":
            return [None] * self.net.n_hidden
        ideal = self.grapes.ideal_read
        return [modulation_factor(self.net.layers[l].backend.abs_sums(1, ideal=ideal).clone(),
                                  self.grapes.lower, self.grapes.bits)
                for l in range(self.net.n_hidden)]

    def gradients(self, x_seq: torch.Tensor, y: torch.Tensor):
        """Forward + BPTT on spike trains (T, B, n_in): returns (loss, correct, traces,
        per-layer (delta_a, delta_b) for the updates, each (T, B, n), *per-sample* errors
        (the batch mean is taken by the update), and the factors."""
        net = self.net
        T = x_seq.shape[0]
        rates, traces = net.forward(x_seq, keep=True)
        scale = self.readout_scale
        e, loss, correct = softmax_error(rates * scale, y)
        m = self.factors()
        L = len(net.layers)
        g_y = (e * (scale / T)).expand(T, *e.shape).contiguous()
        grads: list = [None] * L
        for l in range(L - 1, -1, -1):
            hidden = l < L - 1
            if hidden and self.grapes.mode == "propagating" and m[l] is not None:
                g_y = g_y * m[l].to(g_y.dtype)
            g_a, g_b = net.bptt_layer(l, traces[l], g_y)
            if l > 0:
                Tn, B, n = g_a.shape
                g_y = net.layers[l].backend.backward(g_a.reshape(Tn * B, n)).reshape(Tn, B, -1)
            if hidden and self.grapes.mode == "local" and m[l] is not None:
                mm = m[l].to(g_a.dtype)
                g_a, g_b = g_a * mm, g_b * mm
            grads[l] = (g_a, g_b)
        return loss, correct, traces, grads, m

    def step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> tuple[float, int]:
        """Train on one minibatch of images (B, n_in); returns (summed loss, correct)."""
        T = self.time_steps
        x_seq = rate_code(x, T, self.generator, self.net.params.input_rate)
        loss, correct, traces, grads, m = self.gradients(x_seq, y)
        self.last_factors = m
        self.stats.add(m)
        self.last_grads = grads
        B = x.shape[0]
        # a partial batch moves the weights by its share: lr / batch_size per sample
        w = float(T) if self.batch_size is None or B >= self.batch_size else (
            T * B / self.batch_size)
        p = self.net.params
        for l, layer in enumerate(self.net.layers):
            g_a, g_b = grads[l]
            Tn, _, n = g_a.shape
            xs = traces[l].x.reshape(Tn * B, -1)
            self.optimizer.step(("w", l), layer.backend, xs, g_a.reshape(Tn * B, n) * w, lr)
            if p.train_threshold:
                ones = torch.ones((Tn * B, 1), dtype=g_b.dtype)
                self.optimizer.step(("b", l), layer.bias, ones, g_b.reshape(Tn * B, n) * w, lr)
                layer.bias.program(layer.bias.read().clamp(max=-p.min_threshold))
        return loss, correct


__all__ = ["SNULearner"]
