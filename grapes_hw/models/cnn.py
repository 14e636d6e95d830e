"""Convolutional networks whose filters live in weight backends, trained with GRAPES.

**The crossbar mapping.** ``HWConv2d`` holds one backend of shape ``(C_out, C_in*kH*kW)``:
row ``n`` is filter ``n`` unrolled in ``torch.nn.functional.unfold`` order (input channel,
kernel row, kernel column), as a crossbar holds a convolution (aihwkit's ``AnalogConv2d``
does the same). With ``x`` the layer input, ``P`` its patch matrix ``(B*L, C_in*kH*kW)``
(``L = H' * W'`` output positions per image) and ``D`` the error at the layer's output as
rows ``(B*L, C_out)``:

* forward: ``A = backend.forward(P)`` (one MVM per patch), reshaped to ``(B, C_out, H', W')``;
* backward (the error sent down): ``backend.backward(D)`` (one transposed MVM per patch),
  folded back onto the input (overlapping patches add);
* update: **one** rank update with all ``B*L`` patches, ``optimizer.step(key, backend, P,
  L * D, lr)``; for SGD that is ``backend.update(P, L * D, lr)``, i.e.
  ``W <- W - lr / (B L) * (L D)^T P = W - lr * D^T P / B``: one step of ``lr`` times the
  autograd gradient of the minibatch-mean loss, exactly as for a dense layer. The factor
  ``L`` goes into the errors rather than the rate (as ``models/snu.py`` does for its time steps), so
  the stateful optimizers (momentum, RMSprop, Adam) see that same gradient ``D^T P / B``.

Stride and padding are free in ``HWConv2d``; the bias is digital (a ``(C_out, 1)`` float
backend, like ``HWLinear``'s). Pooling (``Pool2d``: 2x2 max, keeping the argmax for the
backward pass, or 2x2 average) and flattening sit between the layers.

**Exact backends take torch's convolution kernels.** Where the backend's MVM is exact
arithmetic on a float matrix it can read (``exact_mvm``: the float backend; fixed point
without DAC/ADC converters, whose forward is the float shadow of its integers; either inside
a noise wrapper without read noise), forming the patch matrix is wasted work: the same
products come from ``conv2d`` / ``convolution_backward`` (oneDNN) on ``backend.read()``
viewed as ``(C_out, C_in, kH, kW)``. The write still goes through the backend and the
optimizer: the patch sum ``G = D^T P`` is formed by torch's weight-gradient kernel and handed
on as the equivalent pair ``x = G``, ``delta = (C_out / B) I``, for which
``delta^T x / x.shape[0] = G / B``: the same gradient (so a fixed-point write is rounded and
saturated as ever, pulses are counted as ever). Every other backend (analog tiles, fixed
point with converters, read noise) takes the patch path above. The tests check that both
give the same forward, input gradient and update, and that they equal torch's conv2d and
autograd.

**GRAPES on convolutions** (this package's mapping of the spec, ``../shared/GRAPES.md``, to
filters): a conv layer's nodes are its output channels. The importance of channel ``n`` is
the L1 norm of its filter, i.e. of row ``n`` of the backend matrix over all input channels
and kernel positions (``backend.abs_sums(1)``, what the hardware reads);
``m = clip(2 i / max_n i_n, lower, 2)`` as for dense layers
(``functional.grapes.modulation_factor``).
``m_n`` multiplies the error of channel ``n`` at every spatial position (after ``f'``, before
the layer's update and transposed MVM). *Propagating*: the modulated error is also what the
layer sends down, so factors compound through conv and dense layers; *local*: only the
layer's own update is scaled. The output layer is not modulated. Factors are computed once
per minibatch, before its updates.

**Credit assignment**: BP, or FA with a fixed random feedback kernel per conv layer (and a
fixed random matrix per dense layer, including the flatten boundary), He-uniform, seeded,
digital. DFA is not supported (``credit`` is refused by ``check_config``).

**The model** ``--model cnn``: ``--conv`` lists conv layers ``CHANNELS:KERNEL[:POOL]``
(stride 1, "same" padding ``KERNEL // 2``, odd kernels; ``POOL`` is ``max`` (default, 2x2),
``avg`` (2x2) or ``none``); each is followed by the activation and its pooling; the output
is flattened into the dense head (``--layers``, then the output layer). Default
``16:5,32:5``: on 28x28 images conv 16@28x28, pool 14x14, conv 32@14x14, pool 7x7, flatten
1568, then the dense layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from grapes_hw.config import require
from grapes_hw.errors import ConfigError
from grapes_hw.models.conv import ConvContext, HWConv2d
from grapes_hw.models.mlp import HWLinear, Network

DEFAULT_CONV = "16:5,32:5"
"""The conv stack of ``--model cnn`` when ``--conv`` is not given (a small LeNet)."""
POOLS = ("max", "avg", "none")
IMAGE_SHAPES = {"digits": (8, 8), "fashion-mnist": (28, 28), "mnist": (28, 28)}
"""(H, W) of the datasets' images (one channel), for checking a conv spec before loading."""
CREDITS = ("bp", "fa")


# ---- the conv spec -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvLayerSpec:
    """One conv layer of a ``--conv`` spec."""

    channels: int
    kernel: int
    pool: str = "max"

    def text(self) -> str:
        return f"{self.channels}:{self.kernel}" + ("" if self.pool == "max" else f":{self.pool}")


def parse_conv(spec: str, option: str = "conv") -> list[ConvLayerSpec]:
    """``"16:5,32:5"`` -> conv layers; errors name ``option`` and the expected form."""
    form = ("expected comma-separated CHANNELS:KERNEL[:POOL] with positive integers, an odd "
            f"KERNEL and POOL one of {', '.join(POOLS)}, e.g. {DEFAULT_CONV}")
    if not isinstance(spec, str):
        raise ConfigError(option, f"got {spec!r}; {form}")
    parts = [p.strip() for p in spec.split(",")]
    if not spec.strip() or any(not p for p in parts):
        raise ConfigError(option, f"got {spec!r}; {form}")
    out = []
    for p in parts:
        f = [s.strip() for s in p.split(":")]
        if len(f) not in (2, 3):
            raise ConfigError(option, f"got {spec!r}: {p!r} is not CHANNELS:KERNEL[:POOL]; {form}")
        try:
            c, k = int(f[0]), int(f[1])
        except ValueError:
            raise ConfigError(option, f"got {spec!r}: {p!r} has a non-integer; {form}") from None
        pool = f[2] if len(f) == 3 else "max"
        if c < 1 or k < 1 or pool not in POOLS:
            raise ConfigError(option, f"got {spec!r}: {p!r}; {form}")
        if k % 2 == 0:
            raise ConfigError(option, f"got {spec!r}: kernel {k} is even; 'same' padding "
                                      "(KERNEL // 2 on each side) needs an odd kernel")
        out.append(ConvLayerSpec(c, k, pool))
    return out


def conv_text(layers: list[ConvLayerSpec]) -> str:
    return ",".join(s.text() for s in layers)


def feature_shapes(layers: list[ConvLayerSpec], in_shape: tuple[int, int, int],
                   option: str = "conv") -> list[tuple[int, int, int]]:
    """(C, H, W) after each conv layer's pooling, for input ``in_shape``; a spec whose
    pooling shrinks the image to nothing is a ConfigError naming ``option``."""
    c, h, w = in_shape
    out = []
    for s in layers:
        c = s.channels  # "same" padding, stride 1: the conv keeps H x W
        if s.pool != "none":
            h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise ConfigError(option, f"got {conv_text(layers)!r}: {len(out) + 1} poolings shrink "
                                      f"a {in_shape[1]}x{in_shape[2]} image to nothing; use "
                                      "fewer layers or ':none' pooling")
        out.append((c, h, w))
    for s, (_, h, w) in zip(layers, [in_shape, *out], strict=False):  # each layer's input
        if s.kernel > 2 * min(h, w) - 1:  # its outer weights would never meet a pixel
            raise ConfigError(option, f"got {conv_text(layers)!r}: kernel {s.kernel} on a "
                                      f"{h}x{w} input ('same' padding) has weights that never "
                                      f"see a pixel; use a kernel of at most "
                                      f"{2 * min(h, w) - 1}")
    return out


def resolved_conv(cfg) -> str:
    """The conv spec a ``--model cnn`` run uses (``cfg.network.conv`` or the default)."""
    return DEFAULT_CONV if cfg.network.conv is None else cfg.network.conv


def check_config(cfg) -> None:
    """The CNN constraints on a TrainConfig (called by ``TrainConfig.check``)."""
    if cfg.network.model != "cnn":
        require(cfg.network.conv is None, "conv",
                f"applies to model 'cnn'; got model {cfg.network.model!r} with conv "
                f"{cfg.network.conv!r}")
        return
    layers = parse_conv(resolved_conv(cfg))
    if cfg.data.dataset in IMAGE_SHAPES:
        feature_shapes(layers, (1, *IMAGE_SHAPES[cfg.data.dataset]))
    require(cfg.rule.credit in CREDITS, "credit",
            f"got {cfg.rule.credit!r}; model 'cnn' supports {', '.join(CREDITS)} (DFA is not "
            "implemented for convolutions)")
    require(cfg.network.dropout == 0, "dropout",
            f"got {cfg.network.dropout}; model 'cnn' has no dropout")


# ---- activation and pooling ------------------------------------------------------------------
def _numba_ok(*ts: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
               and not t.requires_grad for t in ts)


def act_grad(g: torch.Tensor, h: torch.Tensor, activation: str) -> torch.Tensor:
    """``g * f'(a)`` from the layer's output ``h = f(a)`` (a new tensor)."""
    if activation == "relu":
        return torch.ops.aten.threshold_backward(g, h, 0)
    return torch.ops.aten.tanh_backward(g, h)


class Pool2d:
    """A conv layer's activation (relu or tanh) and pooling: 2x2 with stride 2, ``max`` (the
    window's maximum is kept for the backward pass), ``avg``, or ``none``. Autograd-free:
    ``forward`` returns ``(out, ctx)``, ``backward`` takes ``ctx``.

    Max pooling runs fused with the activation in one numba pass (``_cnn_kernels``; both are
    monotone, so ``pool(f(a)) = f(pool(a))``), and its backward (routing to the maxima, f',
    the per-channel GRAPES factor) in another; other devices or dtypes, and ``fused=False``,
    take torch's ``max_pool2d(return_indices=True)`` and its backward (the same numbers)."""

    def __init__(self, kind: str = "max", activation: str = "relu", fused: bool = True):
        if kind not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {kind!r}")
        if activation not in ("relu", "tanh"):
            raise ValueError(f"activation must be relu or tanh, got {activation!r}")
        self.kind, self.activation, self.fused = kind, activation, bool(fused)

    def _act(self, a: torch.Tensor) -> torch.Tensor:
        return a.clamp_(min=0) if self.activation == "relu" else a.tanh_()

    def forward(self, a: torch.Tensor, keep: bool = True):
        """``(pool(f(a)), ctx)``; ``a`` (the conv output) may be overwritten."""
        if self.kind == "max" and self.fused and _numba_ok(a) and a.dim() == 4:
            from grapes_hw.kernels.pool import act_maxpool2

            B, C, H, W = a.shape
            out = torch.empty((B, C, H // 2, W // 2), dtype=a.dtype)
            arg = torch.empty(out.shape, dtype=torch.int8)
            act_maxpool2(a.numpy(), out.numpy(), arg.numpy(), self.activation == "relu")
            return out, (out, arg, tuple(a.shape))
        a = self._act(a)
        if self.kind == "max":
            if not keep:
                return F.max_pool2d(a, 2, 2), None
            out, idx = F.max_pool2d(a, 2, 2, return_indices=True)
            return out, (a, idx)
        if self.kind == "avg":
            return F.avg_pool2d(a, 2, 2), a
        return a, a

    def backward(self, g: torch.Tensor, ctx, scale: torch.Tensor | None = None,
                 channels_last: bool = False) -> torch.Tensor:
        """The error at the conv output (before f') for ``g`` at the pooled output, times
        the per-channel factor ``scale`` (None: 1). ``channels_last``: the result is laid
        out (B, H, W, C) in memory (a permuted view), as the patch path's rows want it."""
        if self.kind == "max" and isinstance(ctx[1], torch.Tensor) and \
                ctx[1].dtype == torch.int8:
            from grapes_hw.kernels.pool import maxpool2_act_backward

            out, arg, shape = ctx
            B, C, H, W = shape
            if channels_last:
                d = torch.empty((B, H, W, C), dtype=g.dtype).permute(0, 3, 1, 2)
            else:
                d = torch.empty(shape, dtype=g.dtype)
            m = (scale.to(g.dtype).contiguous() if scale is not None
                 else torch.ones(1, dtype=g.dtype))
            maxpool2_act_backward(g.numpy(), out.numpy(), arg.numpy(), m.numpy(),
                                  scale is not None, self.activation == "relu", d.numpy())
            return d
        if self.kind == "max":
            a, idx = ctx
            g = torch.ops.aten.max_pool2d_with_indices_backward(
                g, a, [2, 2], [2, 2], [0, 0], [1, 1], False, idx)
        elif self.kind == "avg":
            a = ctx
            g = torch.ops.aten.avg_pool2d_backward(g, a, [2, 2], [2, 2], [0, 0], False, True,
                                                   None)
        else:
            a = ctx
        d = act_grad(g, a, self.activation)
        if scale is not None:
            d.mul_(scale.to(d.dtype).view(1, -1, 1, 1))
        if channels_last:
            d = d.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        return d


# ---- the network ----------------------------------------------------------------------------
@dataclass
class CNNCache:
    """What one training forward pass of a ``ConvNet`` keeps."""

    conv: list[ConvContext] = field(default_factory=list)
    pools: list = field(default_factory=list)
    """Per conv layer: the context of its activation and pooling (``Pool2d.forward``)."""
    pooled_shape: tuple[int, ...] = ()
    """Shape of the last conv layer's pooled output (what the head's input is a view of)."""
    inputs: list[torch.Tensor] = field(default_factory=list)
    """Per dense layer: its input (the first is the flattened feature map)."""


class ConvNet:
    """Conv layers (each: conv, then activation and pooling: a ``Pool2d`` per conv layer),
    flatten, a dense head (hidden activations as ``Network``) and the output layer.
    ``layers`` lists the conv layers then the dense ones (what ``train_loop`` reads:
    backends, biases, pulses)."""

    def __init__(self, convs: list[HWConv2d], pools: list[Pool2d], head: list[HWLinear],
                 in_shape: tuple[int, int, int], activation: str = "relu"):
        if not convs:
            raise ValueError("a ConvNet needs at least one conv layer")
        if len(pools) != len(convs):
            raise ValueError("one Pool2d per conv layer")
        if any(p.activation != activation for p in pools):
            raise ValueError("the Pool2d stages must use the network's activation")
        self.convs, self.pools = convs, pools
        self.head = Network(head, activation)  # type: ignore[arg-type]
        self.in_shape = tuple(int(v) for v in in_shape)
        self.activation = activation
        self.layers: list = [*convs, *head]

    @property
    def n_hidden(self) -> int:
        return len(self.layers) - 1

    def backends(self):
        return [layer.backend for layer in self.layers]

    def _act(self, a: torch.Tensor) -> torch.Tensor:
        return a.clamp_(min=0) if self.activation == "relu" else a.tanh_()

    def forward(self, x: torch.Tensor, train: bool = False,
                cache: CNNCache | None = None) -> torch.Tensor:
        """Logits for images ``x``, (B, C*H*W) rows or (B, C, H, W)."""
        B = x.shape[0]
        h = x.reshape(B, *self.in_shape)
        if cache is not None:
            cache.conv.clear()
            cache.pools.clear()
            cache.inputs.clear()
        for conv, pool in zip(self.convs, self.pools, strict=True):
            if cache is not None:
                a, ctx = conv.forward_train(h, train)
            else:
                a, ctx = conv.forward(h, train), None
            h, pctx = pool.forward(a, keep=cache is not None)
            if cache is not None:
                cache.conv.append(ctx)
                cache.pools.append(pctx)
        if cache is not None:
            cache.pooled_shape = tuple(h.shape)
        h = h.reshape(B, -1)
        if not h.is_contiguous():
            h = h.contiguous()
        layers = self.head.layers
        for i, layer in enumerate(layers):
            if cache is not None:
                cache.inputs.append(h)
            a = layer.forward(h, train)
            if i == len(layers) - 1:
                return a
            h = self._act(a)
        raise RuntimeError("network has no layers")

    def predict_batch(self) -> int:
        """Images per evaluation batch: about 64 MiB of patches on the patch path."""
        if all(c.exact for c in self.convs):
            return 1024
        _, h, w = self.in_shape
        worst = 1
        for conv, pool in zip(self.convs, self.pools, strict=True):
            h, w = conv.output_hw(h, w)
            worst = max(worst, h * w * conv.shape[1])
            if pool.kind != "none":
                h, w = h // 2, w // 2
        return int(max(16, min(1024, (64 << 20) // (4 * worst))))

    def predict(self, x: torch.Tensor, batch: int | None = None) -> torch.Tensor:
        batch = batch or self.predict_batch()
        out = []
        for s in range(0, x.shape[0], batch):
            out.append(self.forward(x[s:s + batch]).argmax(1))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def describe(net: ConvNet, spec: str) -> dict:
    """The architecture, for result.json (``config.cnn``)."""
    c, h, w = net.in_shape
    maps = []
    for conv, pool in zip(net.convs, net.pools, strict=True):
        h, w = conv.output_hw(h, w)
        if pool.kind != "none":
            h, w = h // 2, w // 2
        maps.append([conv.out_channels, h, w])
    return {"conv": spec, "padding": "same", "stride": 1, "pool_size": 2,
            "pools": [p.kind for p in net.pools], "input_shape": list(net.in_shape),
            "feature_maps": maps, "dense_in": int(net.head.layers[0].shape[1]),
            "exact_conv_kernels": all(c.exact for c in net.convs)}


__all__ = ["DEFAULT_CONV", "ConvLayerSpec", "parse_conv", "feature_shapes", "check_config",
           "Pool2d", "ConvNet"]
