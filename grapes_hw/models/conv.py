"""``HWConv2d``: a 2-D convolution whose filters live in a weight backend as one
``(C_out, C_in*kH*kW)`` crossbar matrix (the mapping is described in ``grapes_hw.models.cnn``).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F


# ---- which backends take torch's convolution kernels ----------------------------------------
def exact_mvm(backend) -> bool:
    """True when ``backend.forward(x)`` is exactly ``x @ backend.read().T`` and
    ``backward(d)`` is ``d @ read()`` on a float tensor (so ``conv2d`` on ``read()`` computes
    the same products): the float backend; fixed point without DAC/ADC converters; either
    wrapped in a noise model without read noise. Exact type checks: a subclass may change
    the MVM."""
    from grapes_hw.backends.fixed_point import FixedPointBackend
    from grapes_hw.backends.float_backend import FloatBackend
    from grapes_hw.backends.noise import NoisyBackend

    t = type(backend)
    if t is NoisyBackend:
        return backend.noise.read_sigma == 0 and exact_mvm(backend.inner)
    if t is FloatBackend:
        return True
    if t is FixedPointBackend:
        return backend.params.dac_bits is None and backend.params.adc_bits is None
    return False


def _pair(v, name: str, least: int) -> tuple[int, int]:
    """``v`` or ``(a, b)`` as two integers >= ``least``; anything else (1.5, "same", a
    1-tuple, 0 for a kernel or stride) is a ValueError naming ``name``."""
    pair = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(pair) != 2 or not all(isinstance(a, numbers.Integral) and not isinstance(a, bool)
                                 and a >= least for a in pair):
        raise ValueError(f"HWConv2d: {name} must be an integer >= {least} or a pair of them, "
                         f"got {v!r}")
    return int(pair[0]), int(pair[1])


_EYE: dict = {}


def _scaled_eye(n: int, scale: float, row_scale: torch.Tensor | None,
                dtype: torch.dtype) -> torch.Tensor:
    """``scale * diag(row_scale)`` (``row_scale`` None: ones), ``(n, n)``."""
    if row_scale is None:
        key = (n, float(scale), dtype)
        e = _EYE.get(key)
        if e is None:
            if len(_EYE) > 64:
                _EYE.clear()
            e = _EYE[key] = torch.eye(n, dtype=dtype).mul_(scale)
        return e
    return torch.diag(row_scale.to(dtype) * scale)


# ---- the layer -----------------------------------------------------------------------------
@dataclass
class ConvContext:
    """What one training forward pass of a ``HWConv2d`` keeps for its backward pass."""

    x: torch.Tensor
    """The layer input (B, C_in, H, W)."""
    patches: torch.Tensor | None
    """The patch matrix (B*L, C_in*kH*kW) on the patch path; None on the exact path."""
    out_hw: tuple[int, int]
    """(H', W') of the output."""


class HWConv2d:
    """A 2-D convolution whose filters live in ``backend`` as a ``(C_out, C_in*kH*kW)``
    matrix (see ``grapes_hw.models.cnn``). ``bias``: a digital per-channel bias (float32, float64
    on a float64 backend). ``exact``: take torch's convolution kernels (None: where
    ``exact_mvm(backend)`` holds; False forces the patch path, for comparisons)."""

    def __init__(self, backend, in_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = False, exact: bool | None = None):
        from grapes_hw.backends.float_backend import FloatBackend, FloatParams

        self.backend = backend
        self.shape = tuple(backend.shape)
        if not (isinstance(in_channels, numbers.Integral) and in_channels >= 1):
            raise ValueError(f"HWConv2d: in_channels must be an integer >= 1, got "
                             f"{in_channels!r}")
        self.in_channels = int(in_channels)
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        self.out_channels = self.shape[0]
        kh, kw = self.kernel_size
        if self.shape[1] != self.in_channels * kh * kw:
            raise ValueError(f"backend shape {self.shape} does not hold {self.out_channels} "
                             f"filters of {self.in_channels}x{kh}x{kw}")
        self.bias: FloatBackend | None = None
        if bias:  # digital, in the precision of the weights as read (float32 but for float64)
            dtype = "float64" if backend.read().dtype == torch.float64 else "float32"
            self.bias = FloatBackend((self.out_channels, 1), FloatParams(dtype))
        self.exact = exact_mvm(backend) if exact is None else bool(exact)

    # -- shapes ------------------------------------------------------------------------------
    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1

    def kernel(self, dtype: torch.dtype) -> torch.Tensor:
        """The filters as the backend reads them, ``(C_out, C_in, kH, kW)``."""
        w = self.backend.read()
        if w.dtype != dtype:
            w = w.to(dtype)
        return w.reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """The patch matrix ``(B*L, C_in*kH*kW)`` of ``x`` (B, C_in, H, W): row ``b*L + l``
        is the receptive field of output position ``l`` of image ``b``, columns in
        ``unfold`` order (channel, kernel row, kernel column). One strided copy."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph))
        B, C, H, W = x.shape
        ho, wo = (H - kh) // sh + 1, (W - kw) // sw + 1
        s = x.stride()
        v = x.as_strided((B, ho, wo, C, kh, kw),
                         (s[0], s[2] * sh, s[3] * sw, s[1], s[2], s[3]))
        return v.reshape(B * ho * wo, C * kh * kw)

    @staticmethod
    def rows(delta: torch.Tensor) -> torch.Tensor:
        """An error (B, C, H', W') as rows (B*L, C), one per patch (a view where ``delta``
        is channels-last, else a copy)."""
        B, C = delta.shape[:2]
        return delta.permute(0, 2, 3, 1).reshape(-1, C)

    # -- compute -----------------------------------------------------------------------------
    def _bias(self, dtype: torch.dtype) -> torch.Tensor | None:
        return None if self.bias is None else self.bias.w[:, 0].to(dtype)

    def forward(self, x: torch.Tensor, train: bool = True) -> torch.Tensor:
        """The layer output (B, C_out, H', W') for ``x`` (B, C_in, H, W)."""
        return self.forward_train(x, train)[0]

    def forward_train(self, x: torch.Tensor,
                      train: bool = True) -> tuple[torch.Tensor, ConvContext]:
        """Output and what the backward pass needs. ``train=False``: the test-time MVM where
        the backend distinguishes it (analog inference tiles: drift applies)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels or not x.is_floating_point():
            raise ValueError(f"HWConv2d: expected a floating-point input of shape (B, "
                             f"{self.in_channels}, H, W), got {x.dtype} {tuple(x.shape)}")
        B = x.shape[0]
        ho, wo = self.output_hw(x.shape[2], x.shape[3])
        if ho < 1 or wo < 1:
            raise ValueError(f"HWConv2d: a {x.shape[2]}x{x.shape[3]} input (padding "
                             f"{self.padding}) is smaller than the {self.kernel_size} kernel")
        if self.exact:
            a = F.conv2d(x, self.kernel(x.dtype), self._bias(x.dtype), self.stride,
                         self.padding)
            return a, ConvContext(x, None, (ho, wo))
        p = self.patches(x)
        mvm = self.backend.forward if train else self.backend.forward_inference
        out = mvm(p)
        if self.bias is not None:
            out = out.add_(self._bias(out.dtype))
        a = out.view(B, ho, wo, self.out_channels).permute(0, 3, 1, 2)  # channels-last
        return a, ConvContext(x, p, (ho, wo))

    def _conv_backward(self, delta: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                       mask: list[bool]):
        return torch.ops.aten.convolution_backward(
            delta, x, weight, None, list(self.stride), list(self.padding), [1, 1], False,
            [0, 0], 1, mask)

    def input_grad(self, delta: torch.Tensor, ctx: ConvContext,
                   feedback: torch.Tensor | None = None) -> torch.Tensor:
        """The error sent down, (B, C_in, H, W), for the error ``delta`` (B, C_out, H', W')
        at the output: the backend's transposed MVM of every patch, folded (overlaps add).
        ``feedback`` (a digital ``(C_out, C_in*kH*kW)`` matrix, feedback alignment) replaces
        the weights."""
        x = ctx.x
        if feedback is not None or self.exact:
            w = (self.kernel(delta.dtype) if feedback is None else
                 feedback.to(delta.dtype).reshape(self.out_channels, self.in_channels,
                                                  *self.kernel_size))
            return self._conv_backward(delta.contiguous(), x, w, [True, False, False])[0]
        B = x.shape[0]
        d = self.backend.backward(self.rows(delta))  # (B*L, K)
        L = ctx.out_hw[0] * ctx.out_hw[1]
        cols = d.view(B, L, -1).transpose(1, 2)
        return F.fold(cols, tuple(x.shape[2:]), self.kernel_size, padding=self.padding,
                      stride=self.stride)

    def update_pair(self, delta: torch.Tensor, ctx: ConvContext,
                    row_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, d)`` to hand ``optimizer.step`` (and so ``backend.update``) such that
        ``d^T x / x.shape[0]`` is the minibatch-mean weight gradient ``D^T P / B`` (rows
        scaled by ``row_scale``, GRAPES' local factor): the patches and ``L * D`` on the
        patch path, ``(G, (C_out / B) diag(row_scale))`` with ``G = D^T P`` on the exact
        path (see ``grapes_hw.models.cnn``)."""
        B = ctx.x.shape[0]
        if self.exact:
            g = self._conv_backward(delta.contiguous(), ctx.x, self.kernel(delta.dtype),
                                    [False, True, False])[1]
            x = g.reshape(self.shape)
            return x, _scaled_eye(self.out_channels, self.out_channels / B, row_scale, x.dtype)
        L = ctx.out_hw[0] * ctx.out_hw[1]
        r = self.rows(delta)
        s = float(L) if row_scale is None else row_scale.to(r.dtype) * float(L)
        return ctx.patches, r * s

    def bias_pair(self, delta: torch.Tensor,
                  row_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, d)`` for the bias: its gradient, the error summed over each channel's
        positions and the batch, over ``B``."""
        B = delta.shape[0]
        g = delta.sum(dim=(0, 2, 3)).reshape(self.out_channels, 1)
        return g, _scaled_eye(self.out_channels, self.out_channels / B, row_scale, g.dtype)

    def weight_gradient(self, delta: torch.Tensor, ctx: ConvContext) -> torch.Tensor:
        """The minibatch-mean weight gradient ``(C_out, C_in*kH*kW)`` the update applies
        (``delta^T x / B`` of ``update_pair``, as ``rules.optim.gradient``)."""
        x, d = self.update_pair(delta, ctx)
        return (d.T @ x).div_(x.shape[0])

    def step(self, optimizer, key, delta: torch.Tensor, ctx: ConvContext, lr: float,
             row_scale: torch.Tensor | None = None) -> None:
        """One optimizer step of the filters (key ``("w", key)``) and the bias
        (``("b", key)``) for the error ``delta`` at the output."""
        optimizer.step(("w", key), self.backend, *self.update_pair(delta, ctx, row_scale), lr)
        if self.bias is not None:
            optimizer.step(("b", key), self.bias, *self.bias_pair(delta, row_scale), lr)
