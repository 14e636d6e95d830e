"""One training step, wired in the order the data flows:

network forward -> output error -> credit assignment (BP/FA/DFA) -> GRAPES modulation ->
optimizer -> ``backend.update`` / ``backend.increment``.

The GRAPES factors are computed once per minibatch, from the weights as they stand before
that minibatch's update (``backend.abs_sums`` of what the hardware reads).
"""

from __future__ import annotations

import torch

from grapes_hw.functional.grapes import GrapesParameters, modulation_factor
from grapes_hw.functional.loss import softmax_error
from grapes_hw.models.mlp import ForwardCache, Network
from grapes_hw.rules.credit import BP


class FactorStats:
    """The GRAPES factors of the steps of one epoch, summarised per hidden layer (one vector
    add per layer and step)."""

    def __init__(self, n_hidden: int, mode: str):
        self.n_hidden, self.mode = n_hidden, mode
        self._sum: list[torch.Tensor | None] = [None] * n_hidden
        self._steps = 0

    def add(self, m: list[torch.Tensor | None]) -> None:
        if not m or m[0] is None:
            return
        for l, ml in enumerate(m):
            if self._sum[l] is None:
                self._sum[l] = ml.detach().double().clone()
            else:
                self._sum[l].add_(ml.detach())
        self._steps += 1

    def pop(self) -> list[dict | None]:
        """Per hidden layer, over the steps since the last call: ``m_mean`` (m averaged over
        the steps and the layer's nodes), ``m_max`` (the largest per-node average) and
        ``carried``: for the propagating version the product of ``m_mean`` over this and
        the later hidden layers, the mean factor the error carries at this layer if the
        layers' factors were independent (local: ``m_mean``). None per layer when GRAPES is
        off. Resets the sums."""
        if self._steps == 0:
            return [None] * self.n_hidden
        out: list[dict] = []
        for s in self._sum:
            avg = s / self._steps
            out.append({"m_mean": float(avg.mean()), "m_max": float(avg.max())})
        carried = 1.0
        for st in reversed(out):
            carried *= st["m_mean"]
            st["carried"] = carried if self.mode == "propagating" else st["m_mean"]
        self._sum = [None] * self.n_hidden
        self._steps = 0
        return list(out)


class Learner:
    """Applies one learning rule (credit + GRAPES + optimizer) to a network."""

    def __init__(self, net: Network, credit: BP, grapes: GrapesParameters, optimizer):
        grapes.check()  # a GrapesParameters built in Python: mode, lower, bits in range
        self.net = net
        self.credit = credit
        self.grapes = grapes
        self.optimizer = optimizer
        self.cache = ForwardCache()
        self.last_factors: list[torch.Tensor | None] = []
        self.stats = FactorStats(net.n_hidden, grapes.mode)

    def factors(self) -> list[torch.Tensor | None]:
        """GRAPES factor m^l for each hidden layer l (None when GRAPES is off)."""
        if self.grapes.mode == "off":
            return [None] * self.net.n_hidden
        out = []
        for l in range(self.net.n_hidden):
            imp = self.credit.importance(l, ideal=self.grapes.ideal_read)
            keep = self.cache.keep[l] if l < len(self.cache.keep) else None
            if keep is not None:  # dropped nodes: importance 0, hence m = lower bound
                imp = imp * keep.to(imp.dtype)
            out.append(modulation_factor(imp, self.grapes.lower, self.grapes.bits))
        return out

    def errors(self, e: torch.Tensor, m: list[torch.Tensor | None]) -> list[torch.Tensor]:
        """The per-layer errors delta^l used for the updates (output layer unmodulated)."""
        net, cache = self.net, self.cache
        L = len(net.layers)
        deltas: list[torch.Tensor] = [None] * L  # type: ignore[list-item]
        deltas[L - 1] = e
        propagating = self.grapes.mode == "propagating"
        for l in range(L - 2, -1, -1):
            g = self.credit.hidden_error(l, deltas[l + 1], e)
            scale = m[l].to(g.dtype) if propagating and m[l] is not None else None
            net.activation_grad_(g, cache.inputs[l + 1], cache.keep[l], scale)
            deltas[l] = g
        if self.grapes.mode == "local":
            # Propagation above used the unmodulated errors; scale only the updates.
            # deltas[l] has already been sent down to layer l - 1, so it is scaled in place.
            for l in range(L - 1):
                if m[l] is not None:
                    deltas[l].mul_(m[l].to(deltas[l].dtype))
        return deltas

    def step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> tuple[float, int]:
        """Train on one minibatch; returns (summed loss, number correct)."""
        logits = self.net.forward(x, train=True, cache=self.cache)
        e, loss, correct = softmax_error(logits, y)
        m = self.factors()
        self.last_factors = m
        self.stats.add(m)
        deltas = self.errors(e, m)
        for l, layer in enumerate(self.net.layers):
            self.optimizer.step(("w", l), layer.backend, self.cache.inputs[l], deltas[l], lr)
            if layer.bias is not None:
                ones = torch.ones((x.shape[0], 1), dtype=deltas[l].dtype)
                self.optimizer.step(("b", l), layer.bias, ones, deltas[l], lr)
        return loss, correct
