"""GRAPES for any PyTorch model: ``GRAPES(model)`` attaches it, ``.remove()`` detaches it.

::

    from grapes_hw.torch import GRAPES

    g = GRAPES(model, mode="propagating")   # or mode="local"
    for x, y in loader:                     # an ordinary training loop, any optimizer
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    g.remove()                              # plain training again, bit for bit

Definitions (``../docs/torch_api.md``; the spec is ``shared/GRAPES.md``):

* Layers: every ``nn.Linear`` and ``nn.Conv2d`` of ``model``, and aihwkit's ``AnalogLinear``
  and ``AnalogConv2d``, in the order the forward pass first uses them (recorded by forward
  hooks on the first forward pass of ``model``), or the ``layers`` list given. The last one is
  the output layer and is never modulated; the others are the hidden layers.
* Importance of node (output unit or output channel) ``n``: the L1 norm of its row of the
  weight matrix, ``i_n = sum_j |W[n, j]|``. For a convolution the row is the filter, i.e. row
  ``n`` of the ``(C_out, C_in/groups * kH * kW)`` matrix. Analog layers are read as the tile
  holds them (``layer.get_weights()``: the conductances mapped to weights, digital output
  scales applied). ``m = clip(2 i / max_n i_n, lower, 2)``, optionally held at ``bits`` bits
  (``grapes_hw.functional.grapes.modulation_factor``). Biases do not enter the importance.
* ``m`` is computed in a forward pre-hook of each layer, i.e. from the weights this forward
  pass uses (before the optimizer step that follows its backward pass). Nothing is carried
  from one step to the next.
* ``propagating`` (the paper's default): the gradient arriving at each hidden layer's output
  (its pre-activation, before the nonlinearity) is multiplied by ``m`` per node, per channel at
  every spatial position for a convolution, before it flows on into the layer (a tensor hook
  on the layer's output). The layer's weight and bias gradients and the error sent further
  down all carry it, so the factors compound down the layers as in the spec.
* ``local``: the error flows on unmodulated; only the hidden layer's own weight (and bias)
  gradient rows are multiplied by ``m`` (a hook on each parameter's gradient).

With aihwkit's ``AnalogSGD`` the analog tile is updated in ``step()`` from the inputs and
output gradients its ``AnalogFunction`` stored in the backward pass. ``propagating`` modulates
the gradient before it reaches the layer's ``AnalogFunction``, so the tile's pulsed update and
its transposed MVM both receive the modulated error. ``local`` scales the stored output
gradient of each tile (a post-hook on the ``AnalogFunction`` node, after the tile's backward
MVM used the unmodulated error), so only the tile's update rows are scaled; for tiles whose
update is a torch gradient (``use_torch_update``) that gradient's rows are scaled instead.

aihwkit is optional: it is only looked at when the model contains its layers.
"""

from __future__ import annotations

import numbers
import sys
import weakref
from collections.abc import Iterable

import torch
from torch import nn

from grapes_hw.errors import ConfigError
from grapes_hw.functional.grapes import modulation_factor

MODES = ("propagating", "local")


def _analog_classes() -> tuple[type, type] | None:
    """aihwkit's (AnalogLinear, AnalogConv2d) if aihwkit is imported: a model holding its
    layers has imported it, otherwise no layer can be one."""
    if "aihwkit" not in sys.modules:
        return None
    try:
        from aihwkit.nn import AnalogConv2d, AnalogLinear
    except ImportError:  # pragma: no cover - a broken aihwkit install
        return None
    return AnalogLinear, AnalogConv2d


def _kind(module: nn.Module) -> str | None:
    """``linear``, ``conv``, ``analog_linear``, ``analog_conv`` or None (not a layer GRAPES
    modulates). AnalogLinear subclasses nn.Linear, so the analog classes come first."""
    analog = _analog_classes()
    if analog is not None:
        if isinstance(module, analog[1]):
            return "analog_conv"
        if isinstance(module, analog[0]):
            return "analog_linear"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        return "conv"
    return None


def layer_weights(module: nn.Module) -> torch.Tensor:
    """The weights GRAPES reads, as the ``(n_out, fan_in)`` matrix whose rows are the nodes
    (for a convolution: one row per filter, ``C_in/groups * kH * kW`` long). Analog layers:
    ``module.get_weights()``, the tile's weights with the digital output scales applied."""
    if _kind(module) in ("analog_linear", "analog_conv"):
        w = module.get_weights()[0]
    else:
        w = module.weight
    w = w.detach()
    return w.reshape(w.shape[0], -1)


def _tile_rows(layer: nn.Module) -> list[tuple[nn.Module, slice]]:
    """Each aihwkit tile module of an analog layer with the output rows it computes."""
    top = layer.analog_module
    array = getattr(top, "array", None)
    if array is None:  # one TileModule: every row
        return [(top, slice(None))]
    out = []
    for in_tiles in array:  # TileModuleArray: array[input block][output block]
        start = 0
        for size, tile in zip(top.out_sizes, in_tiles, strict=True):
            out.append((tile, slice(start, start + size)))
            start += size
    return out


def _analog_nodes(output: torch.Tensor, stop) -> list:
    """The ``AnalogFunction`` autograd nodes that produced ``output`` (through the output
    scaling and the digital bias), not looking past ``stop`` (the input's node)."""
    found, seen = [], set()
    todo = [output.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node is stop or id(node) in seen:
            continue
        seen.add(id(node))
        if hasattr(node, "analog_ctx") and hasattr(node, "analog_tile"):
            found.append(node)  # the node is the function's ctx: its analog context is here
            continue
        todo.extend(n for n, _ in node.next_functions)
    return found


def _scale_along(g: torch.Tensor, m: torch.Tensor, dim: int) -> torch.Tensor:
    """``g * m`` with ``m`` along dimension ``dim`` of ``g`` (a new tensor)."""
    shape = [1] * g.dim()
    shape[dim] = -1
    return g * m.to(device=g.device, dtype=g.dtype).reshape(shape)


_ATTACHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""layer -> a weak reference to the GRAPES modulating it (weak on both sides, so neither is
kept alive by it): one GRAPES per layer, whichever (sub)model it was attached through."""


def _detached(*args, **kwargs) -> None:
    """What a GRAPES hook becomes in a copy or a pickle of the model: nothing."""
    return None


def _detached_hook():
    return _detached


class _Hook:
    """A module hook of a GRAPES. ``copy.deepcopy`` or pickling (``torch.save``) of the model
    turns it into ``_detached``: a copy is a plain model (GRAPES may be attached to it anew),
    and the pickle holds no reference to this GRAPES or its weak references."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __deepcopy__(self, memo):
        return _detached

    def __reduce__(self):
        return _detached_hook, ()


class GRAPES:
    """GRAPES on a torch ``model`` (see the module docstring for the exact definitions).

    ``mode``: ``"propagating"`` (default) or ``"local"``. ``lower``: lower bound of m (1 by
    default; None leaves it unbounded, 0 < m <= 2). ``bits``: hold m at this many bits
    (2**bits levels in [lower, 2]); None: full precision. ``layers``: the layers in forward
    order, the last being the output layer (default: every ``nn.Linear``, ``nn.Conv2d``,
    ``AnalogLinear`` and ``AnalogConv2d`` of ``model``, ordered by their first use in the first
    forward pass). Works with any ``torch.optim`` optimizer and with aihwkit's ``AnalogSGD``.

    ``remove()`` detaches every hook (also usable as a context manager).
    """

    def __init__(self, model: nn.Module, mode: str = "propagating", lower: float | None = 1.0,
                 bits: int | None = None, layers: Iterable[nn.Module] | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"GRAPES: model must be a torch.nn.Module, got {type(model).__name__}")
        if mode not in MODES:
            raise ConfigError("mode", f"got {mode!r}; allowed values: propagating, local")
        if lower is not None and not (isinstance(lower, numbers.Real)
                                      and not isinstance(lower, bool) and 0.0 <= lower <= 2.0):
            raise ConfigError("lower", f"got {lower!r}; must be in [0, 2] (or None: unbounded)")
        if bits is not None and not (isinstance(bits, numbers.Integral)
                                     and not isinstance(bits, bool) and 1 <= bits <= 16):
            raise ConfigError("bits", f"got {bits!r}; allowed 1..16 (or None: full precision)")
        self.model = model
        self.mode = mode
        self.lower = None if lower is None else float(lower)
        self.bits = None if bits is None else int(bits)
        if layers is not None:
            chosen = list(layers)
            for i, layer in enumerate(chosen):
                if not isinstance(layer, nn.Module) or _kind(layer) is None:
                    raise TypeError(f"GRAPES: layers[{i}] is {type(layer).__name__}; expected "
                                    "nn.Linear, nn.Conv2d, AnalogLinear or AnalogConv2d")
            if len({id(layer) for layer in chosen}) != len(chosen):
                raise ConfigError("layers", "a layer is listed twice")
            if not chosen:
                raise ConfigError("layers", "is empty")
            inside = {id(mod) for mod in model.modules()}
            for i, layer in enumerate(chosen):
                if id(layer) not in inside:
                    raise ConfigError(f"layers[{i}]", "is not a module of model: GRAPES would "
                                                      "never see it run")
            self._order: list[nn.Module] | None = chosen
        else:
            chosen = [mod for mod in model.modules() if _kind(mod) is not None]
            self._order = None  # recorded on the first forward pass
        if len(chosen) < 2:
            raise ConfigError("layers" if layers is not None else "model",
                              f"{len(chosen)} Linear/Conv2d layer{'s' * (len(chosen) != 1)}: "
                              "GRAPES modulates hidden layers, so it needs at least one hidden "
                              "layer before the output layer")
        if mode == "local":
            for layer in chosen:
                if any(isinstance(p, nn.parameter.UninitializedParameter)
                       for p in layer.parameters(recurse=False)):
                    raise ConfigError("mode", f"'local' hooks each layer's parameters, and a "
                                              f"lazy {type(layer).__name__} has none yet: run "
                                              "one forward pass before attaching GRAPES")
            owner: dict[int, int] = {}
            for i, layer in enumerate(chosen):
                for p in layer.parameters():
                    j = owner.setdefault(id(p), i)
                    if j != i:
                        raise ConfigError("mode", f"'local' scales each parameter's gradient by "
                                                  f"its layer's factor, and layers {j} and {i} "
                                                  "share a parameter (tied weights): the "
                                                  "product of both would apply; use "
                                                  "'propagating'")
        if any((_ATTACHED.get(layer) or (lambda: None))() is not None for layer in chosen):
            raise ConfigError("model", "GRAPES is already attached to a layer of this model "
                                       "(through it or a part of it: its factors would apply "
                                       "twice); call remove() on that one first")
        self._recording: list[nn.Module] | None = None
        self._layers = chosen
        # m of each layer from its latest forward pass (local mode's parameter hooks read it);
        # weak keys: a layer that goes away takes its entry along.
        self._m: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._handles: list = []
        self._attached = True
        for layer in chosen:
            _ATTACHED[layer] = weakref.ref(self)
        if self._order is None:
            self._handles.append(model.register_forward_pre_hook(_Hook(self._start_recording)))
            self._handles.append(model.register_forward_hook(_Hook(self._stop_recording)))
        for layer in chosen:
            self._handles.append(layer.register_forward_pre_hook(_Hook(self._pre_hook)))
            self._handles.append(layer.register_forward_hook(_Hook(self._post_hook)))
            if mode == "local":
                self._attach_local(layer)

    # -- public ------------------------------------------------------------------------------
    @property
    def layers(self) -> list[nn.Module]:
        """The layers in forward order (the last is the output layer); empty until the first
        forward pass when the order is recorded."""
        if self._order is not None:
            return list(self._order)
        return list(self._recording or [])

    @property
    def hidden_layers(self) -> list[nn.Module]:
        """The modulated layers: all but the output layer."""
        return self.layers[:-1]

    def factors(self) -> list[torch.Tensor]:
        """m of every hidden layer from the weights as they stand now (for inspection)."""
        return [self._factor(layer) for layer in self.hidden_layers]

    def remove(self) -> None:
        """Detach GRAPES: every hook is removed; a graph built before still flows unmodulated."""
        self._attached = False
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._m.clear()
        for layer in self._layers:
            if (_ATTACHED.get(layer) or (lambda: None))() is self:
                del _ATTACHED[layer]

    def __enter__(self) -> GRAPES:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        return (f"GRAPES(mode={self.mode!r}, lower={self.lower}, bits={self.bits}, "
                f"layers={len(self.layers) or len(self._layers)})")

    # -- factors -----------------------------------------------------------------------------
    def _factor(self, layer: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            imp = torch.linalg.vector_norm(layer_weights(layer), ord=1, dim=1)
        return modulation_factor(imp, self.lower, self.bits)

    def _is_hidden(self, layer: nn.Module) -> bool:
        order = self._order if self._order is not None else self._recording
        if not self._attached or not order or order[-1] is layer:
            return False
        return any(layer is other for other in order)

    # -- forward order -----------------------------------------------------------------------
    def _start_recording(self, module, args) -> None:
        if self._order is None:
            self._recording = []

    def _stop_recording(self, module, args, output) -> None:
        if self._order is None and self._recording:
            self._order, self._recording = self._recording, None

    # -- hooks -------------------------------------------------------------------------------
    def _pre_hook(self, layer, args) -> None:
        if self._order is None:
            if self._recording is None:  # a layer called outside model's own forward
                self._recording = []
            if not any(layer is other for other in self._recording):
                self._recording.append(layer)
        if not torch.is_grad_enabled():
            return  # no backward pass follows
        if self._order is not None and not self._is_hidden(layer):
            self._m.pop(layer, None)
            return
        self._m[layer] = self._factor(layer)  # from the weights this pass uses

    def _post_hook(self, layer, args, output) -> None:
        if self.mode != "propagating" or not isinstance(output, torch.Tensor):
            return
        m = self._m.get(layer)
        if m is None or not output.requires_grad:
            return
        # The node's axis: the channel of (N, C, H, W) or (C, H, W); the last of (..., n_out).
        dim = output.dim() - 3 if _kind(layer) in ("conv", "analog_conv") else output.dim() - 1
        if dim < 0:
            return

        def scale(g: torch.Tensor, layer=layer, m=m, dim=dim):
            # Checked at backward time: on the first pass the output layer is known only
            # once the forward pass is over.
            return _scale_along(g, m, dim) if self._is_hidden(layer) else None

        output.register_hook(scale)

    # -- local mode --------------------------------------------------------------------------
    def _attach_local(self, layer: nn.Module) -> None:
        """Hooks that scale only the layer's own update rows by m."""
        if _kind(layer) in ("linear", "conv"):
            for p in (layer.weight, layer.bias):
                if isinstance(p, nn.Parameter) and p.requires_grad:  # a frozen one: no hook
                    self._handles.append(p.register_hook(self._param_hook(layer, slice(None))))
            return
        # aihwkit: the analog weights have no .grad. Tiles updated by AnalogSGD from what their
        # AnalogFunction stored get that stored output gradient scaled (tile forward hooks
        # find the node); tiles whose update is a torch gradient (shared weights of inference
        # tiles, torch-simulated tiles) get that gradient's rows scaled; digital biases too.
        from aihwkit.optim.context import AnalogContext

        seen: set[int] = set()
        top_bias = getattr(layer.analog_module, "bias", None)
        targets = [(top_bias, slice(None))] if isinstance(top_bias, nn.Parameter) else []
        for tile, rows in _tile_rows(layer):
            self._handles.append(tile.register_forward_hook(_Hook(self._tile_hook(layer, rows))))
            # Weights and biases only: not learned output scales or input ranges.
            targets += [(p, rows) for name, p in tile.named_parameters()
                        if not isinstance(p, AnalogContext) and p.requires_grad
                        and name.rsplit(".", 1)[-1] in ("weight", "bias", "shared_weights")]
        for p, rows in targets:
            if id(p) not in seen:
                seen.add(id(p))
                self._handles.append(p.register_hook(self._param_hook(layer, rows)))

    def _param_hook(self, layer: nn.Module, rows: slice):
        ref = weakref.ref(layer)

        def hook(g: torch.Tensor):
            lay = ref()
            m = self._m.get(lay) if lay is not None else None
            if m is None or not self._is_hidden(lay):
                return None
            m = m[rows]
            if g.dim() == 0 or g.shape[0] != m.shape[0]:
                return None  # not a per-row parameter (e.g. a scalar output scale)
            return _scale_along(g, m, 0)

        return hook

    def _tile_hook(self, layer: nn.Module, rows: slice):
        ref = weakref.ref(layer)

        def hook(tile, args, output):
            lay = ref()
            if lay is None or not isinstance(output, torch.Tensor) or not output.requires_grad:
                return
            m = self._m.get(lay)
            if m is None:
                return
            x = args[0] if args else None
            stop = x.grad_fn if isinstance(x, torch.Tensor) else None
            for node in _analog_nodes(output, stop):
                # The node's analog context, not the node: a hook holding its own node would
                # keep the graph alive.
                node.register_hook(self._stored_error_hook(lay, node.analog_ctx, m[rows]))

        return hook

    def _stored_error_hook(self, layer: nn.Module, analog_ctx, m: torch.Tensor):
        ref = weakref.ref(layer)

        def hook(grad_inputs, grad_outputs):
            # Runs right after AnalogFunction.backward: the tile's transposed MVM has used
            # the unmodulated error, and the error it stored for AnalogSGD is the last entry.
            lay = ref()
            stored = analog_ctx.analog_grad_output
            if (lay is None or not self._is_hidden(lay) or analog_ctx.use_torch_update
                    or not stored):
                return None
            d = stored[-1]
            stored[-1] = _scale_along(d, m, 1 if analog_ctx.use_indexed else d.dim() - 1)
            return None

        return hook
