"""One training step, wired in the order the data flows:

network forward -> output error -> credit assignment (BP/FA/DFA) -> GRAPES modulation ->
optimizer -> ``backend.update`` / ``backend.increment``.

The GRAPES factors are computed once per minibatch, from the weights as they stand before
that minibatch's update (``backend.abs_sums`` of what the hardware reads).
"""

from __future__ import annotations

import torch

from .credit import BP
from .grapes import GrapesParameters, modulation_factor
from .network import ForwardCache, Network


def softmax_error(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """Output error ``e = softmax(logits) - onehot(y)``, summed cross-entropy, #correct.

    A contiguous CPU float batch goes through one numba kernel (compiled on first use):
    ten small torch operations cost more than the arithmetic at batch 64.
    """
    if (logits.dim() == 2 and logits.dtype in (torch.float32, torch.float64)
            and logits.device.type == "cpu" and logits.is_contiguous()
            and not logits.requires_grad and y.dtype == torch.int64 and y.is_contiguous()
            and logits.shape[0] > 0):
        from ._kernels import softmax_xent

        e = torch.empty_like(logits)
        loss, correct = softmax_xent(logits.numpy(), y.numpy(), e.numpy())
        return e, float(loss), int(correct)
    return _softmax_error_torch(logits, y)


def _softmax_error_torch(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """The reference in torch operations (any device or dtype)."""
    logp = torch.log_softmax(logits, dim=1)
    yy = y[:, None]
    loss = -float(logp.gather(1, yy).sum())
    correct = int((logits.argmax(1) == y).sum())
    e = logp.exp_()
    e.scatter_add_(1, yy, _neg_ones(y.shape[0], e.dtype))
    return e, loss, correct


_NEG_ONES: dict = {}


def _neg_ones(n: int, dtype: torch.dtype) -> torch.Tensor:
    t = _NEG_ONES.get((n, dtype))
    if t is None:
        t = _NEG_ONES[(n, dtype)] = torch.full((n, 1), -1.0, dtype=dtype)
    return t


class Learner:
    """Applies one learning rule (credit + GRAPES + optimizer) to a network."""

    def __init__(self, net: Network, credit: BP, grapes: GrapesParameters, optimizer):
        self.net = net
        self.credit = credit
        self.grapes = grapes
        self.optimizer = optimizer
        self.cache = ForwardCache()
        self.last_factors: list[torch.Tensor | None] = []

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
            for l in range(L - 1):
                if m[l] is not None:
                    deltas[l] = deltas[l] * m[l].to(deltas[l].dtype)
        return deltas

    def step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> tuple[float, int]:
        """Train on one minibatch; returns (summed loss, number correct)."""
        logits = self.net.forward(x, train=True, cache=self.cache)
        e, loss, correct = softmax_error(logits, y)
        m = self.factors()
        self.last_factors = m
        deltas = self.errors(e, m)
        for l, layer in enumerate(self.net.layers):
            self.optimizer.step(("w", l), layer.backend, self.cache.inputs[l], deltas[l], lr)
            if layer.bias is not None:
                ones = torch.ones((x.shape[0], 1), dtype=deltas[l].dtype)
                self.optimizer.step(("b", l), layer.bias, ones, deltas[l], lr)
        return loss, correct
