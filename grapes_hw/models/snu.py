"""Spiking neural units (SNU) and soft SNUs (sSNU) trained with BPTT, with GRAPES.

The unit (Woźniak et al., Nature Machine Intelligence 2020; ``../shared/GRAPES.md``)::

    s_t = g(W x_t + l(tau) * s_(t-1) * (1 - y_(t-1)))      g = ReLU (output layer: identity)
    y_t = h(s_t + b)

* SNU: ``h`` is the Heaviside step (a spike when ``s_t + b > 0``, i.e. when the state crosses
  the threshold ``-b``); for training its derivative is replaced by the derivative of the
  sigmoid relaxation ``sigma(k z)`` (``k = surrogate_slope``), the smooth surrogate.
* sSNU: ``h`` is the sigmoid itself (``y`` in (0, 1)); exact gradients.
* ``(1 - y_(t-1))`` is the reset: after a spike the state carried to the next step is zeroed
  (soft for the sSNU). ``l(tau) = decay`` is the membrane decay, ``b`` a per-node bias
  initialised to ``-threshold`` (a negative threshold) and trained like the weights.

**Input**: images are rate coded, at each of ``N_s`` steps pixel ``x`` in [0, 1] spikes with
probability ``input_rate * x`` (Bernoulli, seeded). ``N_s`` = ``time_steps`` in training
(20 in the GRAPES paper) and ``test_time_steps`` at evaluation (300 in the paper; default
here 20 to keep runs cheap).

**Output layer** (as in the SNU paper and GRAPES' SNU experiments): the output layer is a
spiking SNU/sSNU layer too, decoded by its firing rate. The logits fed to softmax
cross-entropy are the output rates times a fixed scale, ``logits = readout_scale * mean_t
y_t`` (``readout_scale`` = 10 by default, independent of ``N_s``; unset: ``time_steps``,
i.e. the spike counts of a training presentation); the prediction is the class with the
highest rate (ties go to the lowest index).

**What keeps training stable** (issue 16; measured on digits, 3 x 256, SGD lr 0.1, N_s 20):

* *Partial minibatches weigh by their size.* Digits has 1347 training images, so every
  epoch ends with a batch of 3. Its batch-mean gradient counts each of the 3 images 21
  times as much as a full batch does and is far noisier (on those steps the largest output
  bias moved by 0.06-0.15, the median step moved it by 0.02; once the output update was 11
  times its median), and it was the step that broke the runs: ``--model snu`` went from
  0.57 to 0.102 test accuracy at the end of epoch 3 on exactly that step, and test
  accuracies dipped at epoch ends while the training accuracy held (0.92 -> 0.62; a
  1344-image subset, no partial batch, trained smoothly). Each sample therefore moves the
  weights by ``lr / batch_size`` times its gradient, in a partial batch too
  (``SNULearner(batch_size=...)``: a batch of ``B < batch_size`` takes ``B / batch_size``
  of the step).
* *Thresholds stay positive* (``min_threshold``): with ``g = ReLU`` the state is ``>= 0``
  (and 0 without input), so a trained bias ``b >= 0`` makes the SNU fire at every step
  whatever its input. Cross-entropy keeps raising the output biases of the target classes
  (the surrogate gradient reaches ``b`` at every step, also where ``s = 0``), and a step
  that takes one over 0 makes that class win every image: the 0.102 collapse (output
  ``max b`` +0.028, one of ten output units spiking at all 20 steps for every input, next
  batch loss 14.7). After each update ``b`` is clipped to ``<= -min_threshold``.
* *The output layer's state is linear* (``output_g = "identity"``; hidden layers keep
  ``g = ReLU``): an output unit whose ReLU state input is ``<= 0`` for every image gets no
  gradient again and its class is never predicted (the sSNU plateaued at 0.35-0.44 test
  accuracy that way). The emission ``y = h(s + b)`` is unchanged.
* *sSNU init gain 3* (``init_gain``): sSNU outputs are soft and mostly near ``sigmoid(b)``,
  so He-uniform weights (scaled for 0/1 inputs) left the states of deeper layers far below
  the threshold 3 (max state 4.5, 2.2, 1.0, 0.36 from the first layer to the output) and
  the signal faded layer by layer (test accuracy 0.16 after 5 epochs). Layers after the
  first start at 3 times He-uniform.
* *sSNU output rows start centred* (``center_output``): with the output state linear, an
  output unit starts at its weight row's sum times the mean hidden output (~0.11), summed
  over the steps; uncentred He-uniform rows (times the gain 3) spread the units' resting
  ``s + b`` from -1.5 to -10, and a unit below about -7 (sigmoid slope < 1e-3) never
  learns: on digits, 2 x 256, seed 1 stalled at 0.78 with classes 1 and 2 never predicted,
  seed 2 at 0.86 (5 seeds x SGD/GRAPES, 20 epochs: 3 of 10 runs below 0.9). Rows with zero
  mean halve the spread (-2.1 to -6.1; the lowest unit's slope 50x larger): all 10 runs
  0.958-0.976.
* *Readout scale 10, not the spike count.* With ``logits = counts`` (scale ``N_s = 20``)
  one SGD step at lr 0.1 changed the output weights by 14 % of their norm (the MLP's
  output layer: 4 %), whose early overshoots silenced a ReLU output layer for good (every
  output state ``u <= 0``: ``--layers 256,256 --lr 0.05 --grapes propagating`` stayed at
  ln 10 loss, 0.19 accuracy). Scale 10: 3.9 % (5 % with the linear output state, counts
  18 %). Logit gaps up to 10 leave cross-entropy room (a sure prediction costs 4e-4).

**Weights on a backend**: every layer's ``W`` is a :class:`~grapes_hw.models.mlp.HWLinear`
backend. Since layers are feed-forward and the recurrence is per node, the ``W x_t`` of all
``N_s`` steps are one stacked ``backend.forward`` call on the ``(N_s * B, n_in)`` matrix
(each row is one MVM of one step, exactly the per-step MVMs); likewise the error sent down is
one stacked ``backend.backward``. The BPTT gradient of the batch-mean loss is
``dW = (1/B) sum_t delta_t^T x_t``; it is written as **one** update with the stacked
``(N_s * B)`` inputs and errors, the errors multiplied by ``N_s``::

    optimizer.step(key, backend, X_stacked, N_s * Delta_stacked, lr)
    # SGD: backend.update(X, N_s * Delta, lr): W -= lr / (N_s B) * (N_s Delta)^T X
    #                                            = lr * (1/B) sum_t delta_t^T x_t

so the learning rate means the same as for the MLP (one step of ``lr`` times the gradient of
the batch-mean loss) for every optimizer, including the scale-invariant ones (scaling ``lr``
instead would be wrong for Adam/RMSprop). The bias is updated the same way through its
``(n, 1)`` digital backend with a constant-1 input, then clipped to ``b <= -min_threshold``.
A partial batch of ``B < batch_size`` samples has its errors scaled by ``B / batch_size``.

**GRAPES** modulates the input weights ``W`` of each hidden layer, importance from its rows
(``backend.abs_sums(1)``), computed once per minibatch before the update. Because the SNU
recurrence is per node (no lateral weights) the BPTT inside a layer is linear and diagonal
in the error arriving from above, so multiplying that error by ``m^l`` multiplies every
``delta_t`` of the layer by ``m^l``: *propagating* scales the layer's whole error sequence
(update and what is sent down, so factors compound down the layers, never across time);
*local* scales only the layer's own weight/bias update. The output layer is not modulated.
Only BP credit assignment is supported for SNUs; dropout is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grapes_hw.config import from_mapping, require
from grapes_hw.functional.snu import SNUParams, h_grad, rate_code, snu_step
from grapes_hw.models.mlp import HWLinear

MODELS = ("mlp", "snu", "ssnu")


@dataclass
class LayerTrace:
    """What one layer's forward pass keeps for BPTT, each (T, B, n)."""

    x: torch.Tensor
    s: torch.Tensor
    y: torch.Tensor
    z: torch.Tensor
    active: torch.Tensor


class SNUNetwork:
    """A stack of SNU (or sSNU) layers whose weights live in backends, the last one the
    (spiking) output layer. ``layers[i].bias`` holds the per-node bias b."""

    def __init__(self, layers: list[HWLinear], soft: bool = False,
                 params: SNUParams | None = None):
        for layer in layers:
            if layer.bias is None:
                raise ValueError("SNU layers need a bias (the threshold); use HWLinear(bias=True)")
        self.layers = layers
        self.soft = bool(soft)
        self.params = params or SNUParams()

    @property
    def n_hidden(self) -> int:
        return len(self.layers) - 1

    def backends(self):
        return [layer.backend for layer in self.layers]

    def state_relu(self, l: int) -> bool:
        """Whether layer ``l``'s state goes through g = ReLU (hidden layers always; the output
        layer with ``output_g = "relu"``)."""
        return l < len(self.layers) - 1 or self.params.output_g == "relu"

    def bias(self, l: int, dtype: torch.dtype) -> torch.Tensor:
        return self.layers[l].bias.w[:, 0].to(dtype)

    def run_layer(self, l: int, x_seq: torch.Tensor,
                  keep: bool) -> tuple[torch.Tensor, LayerTrace | None]:
        """Layer ``l`` over a whole input sequence (T, B, n_in): outputs (T, B, n)."""
        T, B, n_in = x_seq.shape
        layer = self.layers[l]
        a_all = layer.backend.forward(x_seq.reshape(T * B, n_in)).reshape(T, B, -1)
        n = a_all.shape[2]
        b = self.bias(l, a_all.dtype)
        s = torch.zeros((B, n), dtype=a_all.dtype)
        y = torch.zeros_like(s)
        ys = torch.empty_like(a_all)
        if keep:
            ss, zs, act = torch.empty_like(a_all), torch.empty_like(a_all), torch.empty_like(a_all)
        d = self.params.decay
        relu = self.state_relu(l)
        for t in range(T):
            u, s, y = snu_step(a_all[t], s, y, b, d, self.soft, relu)
            ys[t] = y
            if keep:
                ss[t] = s
                zs[t] = s + b
                act[t] = (u > 0) if relu else 1.0
        trace = LayerTrace(x_seq, ss, ys, zs, act) if keep else None
        return ys, trace

    def forward(self, x_seq: torch.Tensor,
                keep: bool = False) -> tuple[torch.Tensor, list[LayerTrace]]:
        """Output rates (B, n_out) for spike trains (T, B, n_in), and the traces if ``keep``."""
        traces = []
        h = x_seq
        for l in range(len(self.layers)):
            h, tr = self.run_layer(l, h, keep)
            if keep:
                traces.append(tr)
        return h.mean(0), traces

    def bptt_layer(self, l: int, tr: LayerTrace,
                   g_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse-time pass through layer ``l`` given dL/dy_t from above (T, B, n): returns
        (dL/da_t, dL/db_t), each (T, B, n), with a_t = W x_t."""
        T = g_y.shape[0]
        d = self.params.decay
        slope = 1.0 if self.soft else self.params.surrogate_slope
        g_a = torch.empty_like(g_y)
        g_b = torch.empty_like(g_y)
        g_u_next = torch.zeros_like(g_y[0])
        for t in range(T - 1, -1, -1):
            # u_(t+1) = a_(t+1) + d * s_t * (1 - y_t): gradients into s_t and y_t from the future
            gy = g_y[t] - g_u_next * d * tr.s[t]
            gz = gy * h_grad(tr.z[t], slope)
            gs = gz + g_u_next * d * (1.0 - tr.y[t])
            g_u = gs * tr.active[t]
            g_a[t] = g_u
            g_b[t] = gz
            g_u_next = g_u
        return g_a, g_b

    def predict(self, x: torch.Tensor, steps: int, generator: torch.Generator,
                batch: int = 1024) -> torch.Tensor:
        out = []
        for s in range(0, x.shape[0], batch):
            xs = rate_code(x[s:s + batch], steps, generator, self.params.input_rate)
            rates, _ = self.forward(xs)
            out.append(rates.argmax(1))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


# ---- building and running -------------------------------------------------------------------
def snu_params(cfg) -> SNUParams:
    p = from_mapping(SNUParams, dict(cfg.extra.get("snu", {})), "snu")
    p.check()
    return p


def check_config(cfg) -> None:
    """The SNU-specific constraints on a TrainConfig (called by ``TrainConfig.check``)."""
    require(cfg.network.model in MODELS, "model",
            f"got {cfg.network.model!r}; allowed values: {', '.join(MODELS)}")
    if cfg.network.model == "mlp":
        return
    require(cfg.rule.credit == "bp", "credit",
            f"got {cfg.rule.credit!r}; model {cfg.network.model!r} supports bp only")
    require(cfg.network.dropout == 0, "dropout",
            f"got {cfg.network.dropout}; model {cfg.network.model!r} has no dropout")
    snu_params(cfg)


__all__ = ["MODELS", "SNUNetwork", "check_config"]
