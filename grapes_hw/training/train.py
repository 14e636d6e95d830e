"""One training run for every model: the builder per ``TrainConfig.model`` (MLP, SNU/sSNU,
CNN) and ``run(config) -> result dict`` through the one driver (``training.driver``).
"""

from __future__ import annotations

import torch

from grapes_hw.config import to_dict
from grapes_hw.errors import ConfigError
from grapes_hw.functional.init import he_uniform
from grapes_hw.models.cnn import (
    ConvNet,
    Pool2d,
    describe,
    feature_shapes,
    parse_conv,
    resolved_conv,
)
from grapes_hw.models.conv import HWConv2d
from grapes_hw.models.mlp import HWLinear
from grapes_hw.models.snu import SNUNetwork, snu_params
from grapes_hw.rules.cnn import CNNLearner
from grapes_hw.rules.credit import make_credit
from grapes_hw.rules.learner import Learner
from grapes_hw.rules.snu import SNULearner
from grapes_hw.training.config import TrainConfig
from grapes_hw.training.driver import EpochCallback, ModelRun, build_network, evaluate, run_model


def build_snu_network(cfg, model, n_in: int, n_out: int) -> SNUNetwork:
    """He-uniform weights on ``model``'s backend (as ``driver.build_network``; every layer
    after the first times ``init_gain``; the output rows centred with ``center_output``),
    biases at ``-threshold``."""

    soft = cfg.network.model == "ssnu"
    params = snu_params(cfg).resolved(soft)
    base = build_network(cfg.replace(bias=True, dropout=0.0), model, n_in, n_out)
    if params.init_gain != 1.0 or params.center_output:
        # the same He-uniform draws as build_network, scaled; the output rows centred
        gen = torch.Generator().manual_seed(cfg.run.seed)
        last = len(base.layers) - 1
        for l, layer in enumerate(base.layers):
            w = he_uniform(tuple(layer.shape), gen)
            w = w if l == 0 else w * params.init_gain
            if l == last and params.center_output:
                w = w - w.mean(1, keepdim=True)
            layer.backend.program(w)
    for layer in base.layers:
        layer.bias.w.fill_(-params.threshold)
    return SNUNetwork(base.layers, soft=soft, params=params)


def build_snu_run(cfg, model, data, x_train, optimizer):
    """The SNU/sSNU network and its BPTT learner for ``driver.run_model`` (``run``
    with ``--model snu|ssnu``): the same result keys as the MLP run, plus ``config.snu``."""
    net = build_snu_network(cfg, model, x_train.shape[1], data.n_classes)
    learner = SNULearner(net, cfg.grapes_params(), optimizer, cfg.network.time_steps,
                         torch.Generator().manual_seed(cfg.run.seed + 2718281),
                         batch_size=cfg.run.batch_size)

    class _NoFeedback:
        def state_bytes(self) -> int:
            return 0

    def evaluate(x, y) -> float:
        if x.shape[0] == 0:
            return float("nan")
        gen = torch.Generator().manual_seed(cfg.run.seed + 31337)  # same test spikes every epoch
        return float((net.predict(x, cfg.network.test_time_steps, gen) == y).double().mean())

    # drift: --drift-eval applies to MLP and CNN runs on analog inference tiles only
    return ModelRun(net, learner, evaluate,
                    lambda: [net.layers[l].backend.abs_sums(1) for l in range(net.n_hidden)],
                    _NoFeedback(), {"snu": to_dict(net.params)}, drift=False)


# ---- building and running ------------------------------------------------------------------
def build_cnn(cfg, model, image_shape: tuple[int, int], n_classes: int,
              in_channels: int = 1) -> ConvNet:
    """He-uniform initialised CNN on ``model``'s backend, seeded by ``cfg.run.seed`` (as
    ``driver.build_network``: one generator, layers in order, backend seeds
    ``seed * 1000 + i``)."""
    from grapes_hw.backends.registry import make_backend, resolve_device_model

    model = resolve_device_model(model)
    specs = parse_conv(resolved_conv(cfg))
    in_shape = (int(in_channels), int(image_shape[0]), int(image_shape[1]))
    shapes = feature_shapes(specs, in_shape)
    gen = torch.Generator().manual_seed(cfg.run.seed)
    convs, pools = [], []
    c_in = in_shape[0]
    i = 0
    for s in specs:
        shape = (s.channels, c_in * s.kernel * s.kernel)
        backend = make_backend(model, shape, seed=cfg.run.seed * 1000 + i)
        backend.program(he_uniform(shape, gen))
        convs.append(HWConv2d(backend, c_in, s.kernel, 1, s.kernel // 2, bias=cfg.network.bias))
        pools.append(Pool2d(s.pool, cfg.network.activation))
        c_in = s.channels
        i += 1
    c, h, w = shapes[-1]
    sizes = [c * h * w, *[int(n) for n in cfg.network.layers], int(n_classes)]
    head = []
    for j in range(len(sizes) - 1):
        shape = (sizes[j + 1], sizes[j])
        backend = make_backend(model, shape, seed=cfg.run.seed * 1000 + i)
        backend.program(he_uniform(shape, gen))
        head.append(HWLinear(backend, bias=cfg.network.bias))
        i += 1
    return ConvNet(convs, pools, head, in_shape, cfg.network.activation)


def build_cnn_run(cfg, model, data, x_train, optimizer):
    """The CNN and its learner for ``driver.run_model`` (``run`` with ``--model
    cnn``): the same result keys as the MLP run, plus ``config.cnn`` (the architecture)."""
    image_shape = tuple(data.image_shape)
    n_pix = image_shape[0] * image_shape[1]
    if x_train.shape[1] % n_pix:
        raise ConfigError("dataset", f"{data.name}: rows of {x_train.shape[1]} values are "
                                       f"not images of {image_shape}")
    spec = resolved_conv(cfg)
    net = build_cnn(cfg, model, image_shape, data.n_classes,
                    in_channels=x_train.shape[1] // n_pix)
    learner = CNNLearner(net, cfg.grapes_params(), optimizer, cfg.rule.credit,
                         torch.Generator().manual_seed(cfg.run.seed + 104729))

    def evaluate(x, y) -> float:
        if x.shape[0] == 0:
            return float("nan")
        return float((net.predict(x) == y).double().mean())

    return ModelRun(net, learner, evaluate,
                    lambda: [learner.importance(l) for l in range(net.n_hidden)], learner,
                    {"cnn": describe(net, spec)})


def build_mlp(cfg: TrainConfig, model, data, x_train, optimizer) -> ModelRun:
    """The MLP's network (``build_network``), credit assignment and learner."""
    net = build_network(cfg, model, x_train.shape[1], data.n_classes)
    credit = make_credit(cfg.rule.credit, net, torch.Generator().manual_seed(cfg.run.seed + 104729))
    learner = Learner(net, credit, cfg.grapes_params(), optimizer)
    return ModelRun(net, learner, lambda x, y: evaluate(net, x, y),
                    lambda: [credit.importance(l) for l in range(net.n_hidden)], credit)


def _builder(name: str):
    """The builder of ``--model name``: mlp, cnn, or snu/ssnu."""
    return {"mlp": build_mlp, "cnn": build_cnn_run}.get(name, build_snu_run)


def run(cfg: TrainConfig, *, progress: bool = False,
        on_epoch: EpochCallback | None = None, dataset=None) -> dict:
    """Train one network as configured (any ``model``); return the result dictionary."""
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"run: cfg must be a TrainConfig (e.g. TrainConfig.from_flat("
                        f"dataset='digits', lr=0.1)), got {cfg!r}")
    cfg.check()
    return run_model(cfg, _builder(cfg.network.model), progress=progress, on_epoch=on_epoch,
                     dataset=dataset)


__all__ = ["build_cnn", "build_cnn_run", "build_mlp", "build_snu_network", "build_snu_run",
           "run"]
