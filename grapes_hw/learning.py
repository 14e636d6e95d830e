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
from .network import ForwardCache, Network, _fusable


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
        self.net = net
        self.credit = credit
        self.grapes = grapes
        self.optimizer = optimizer
        self.cache = ForwardCache()
        self.last_factors: list[torch.Tensor | None] = []
        self.stats = FactorStats(net.n_hidden, grapes.mode)
        self._rowmod = None  # per hidden layer (backend, _omp.RowModulation); False: unused
        self._pending: list = []

    def factors(self) -> list[torch.Tensor | None]:
        """GRAPES factor m^l for each hidden layer l (None when GRAPES is off)."""
        if self.grapes.mode == "off":
            return [None] * self.net.n_hidden
        fused = self._fused_factors() if self._rowmod else None
        if fused is not None:
            return fused
        out = []
        for l in range(self.net.n_hidden):
            imp = self.credit.importance(l, ideal=self.grapes.ideal_read)
            keep = self.cache.keep[l] if l < len(self.cache.keep) else None
            if keep is not None:  # dropped nodes: importance 0, hence m = lower bound
                imp = imp * keep.to(imp.dtype)
            out.append(modulation_factor(imp, self.grapes.lower, self.grapes.bits))
        return out

    # -- GRAPES factors fused into the forward pass -------------------------------------------
    # Where it applies (row importance as in BP and FA, hidden backends whose read() is their
    # float32 storage, no dropout, torch's OpenMP pool found), m^l is computed right after
    # layer l's forward MVM, in one parallel pass over W^l while it is still in the CPU
    # caches. The weights do not change between the forward pass and the updates, so these
    # are exactly the factors the spec asks for; factors() checks that (the tensor and its
    # version counter) and otherwise takes the generic path. Both give the same values bit
    # for bit (one row-sum routine; see the tests).

    def _fused_ok(self) -> bool:
        layers = self.net.layers[:self.net.n_hidden]
        return (self.grapes.mode != "off" and bool(layers) and self.net.dropout == 0
                and type(self.credit).importance is BP.importance
                and all(getattr(layer.backend, "exact_read", False)
                        and layer.backend.read().dtype is torch.float32 for layer in layers))

    def _arm_fused(self) -> None:
        """Decide once whether the fused path applies; install the forward hook per step."""
        if self._rowmod is None:
            self._rowmod = False
            if self._fused_ok():
                from . import _omp  # numba cfunc on torch's OpenMP threads (lazy)

                if _omp.available():
                    g = self.grapes
                    levels = 0 if g.bits is None else (1 << g.bits) - 1
                    self._rowmod = [(layer.backend,
                                     _omp.RowModulation(layer.shape[0], g.lower, levels))
                                    for layer in self.net.layers[:self.net.n_hidden]]
        self._pending = [None] * self.net.n_hidden
        self.cache.after_mvm = (self._after_mvm if self._rowmod and self.net.dropout == 0
                                else None)

    def _after_mvm(self, l: int, layer) -> None:
        if l < len(self._rowmod):
            backend, rm = self._rowmod[l]
            if backend is layer.backend and backend.exact_read:
                w = backend.read()
                if rm.accepts(w):
                    self._pending[l] = (rm.run(w), w, w._version)

    def _fused_factors(self) -> list[torch.Tensor] | None:
        pending, self._pending = self._pending, [None] * self.net.n_hidden
        out = []
        for l, p in enumerate(pending):
            if p is None:
                return None
            m, w, version = p
            if self.net.layers[l].backend.read() is not w or w._version != version:
                return None
            out.append(m)
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
                    d, s = deltas[l], m[l].to(deltas[l].dtype)
                    if _fusable(d, s, None) and s.is_contiguous() and s.dim() == 1:
                        from ._kernels import scale_columns  # numba, compiled on first use

                        scale_columns(d.numpy(), s.numpy())
                    else:
                        d.mul_(s)
        return deltas

    def step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> tuple[float, int]:
        """Train on one minibatch; returns (summed loss, number correct)."""
        self._arm_fused()
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
