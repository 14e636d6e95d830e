"""``grapes_hw.torch.GRAPES`` on torch and aihwkit models, and the Python API for devices.

The exactness checks train the same MLP with grapes_hw's own engine (``Learner``) and with
plain torch + ``GRAPES``; the conv check compares with a reference written here from the
definition (a per-channel gradient scaling as its own autograd function, m from the filters'
L1 norms computed by hand); the aihwkit checks compare one ``AnalogSGD`` step with and without
GRAPES row by row on a deterministic FloatingPoint tile.
"""

from __future__ import annotations

import copy
import importlib.util
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grapes_hw.backends.float_backend import FloatParams
from grapes_hw.backends.registry import DeviceModel, device_model_from_rpu_config
from grapes_hw.data.datasets import load_dataset
from grapes_hw.errors import ConfigError
from grapes_hw.functional.grapes import GrapesParameters
from grapes_hw.rules.credit import BP
from grapes_hw.rules.learner import Learner
from grapes_hw.rules.optim import make_optimizer
from grapes_hw.torch import GRAPES
from grapes_hw.training.config import TrainConfig
from grapes_hw.training.driver import build_network
from grapes_hw.training.train import run

HAVE_AIHWKIT = importlib.util.find_spec("aihwkit") is not None
needs_aihwkit = pytest.mark.skipif(not HAVE_AIHWKIT, reason="needs aihwkit")

FLOAT64 = DeviceModel(name="float64", description="float64 weights (exactness checks)",
                      backend="float", params=FloatParams(dtype="float64"))


@pytest.fixture(scope="module")
def digits():
    d = load_dataset("digits", progress=False)
    return torch.from_numpy(d.x_train).double(), torch.from_numpy(d.y_train).long()


def _batches(n: int, count: int, bs: int = 64, seed: int = 1) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return [perm[k * bs:(k + 1) * bs] for k in range(count)]


def _mlp(weights: list[torch.Tensor], inplace: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, w in enumerate(weights):
        lin = nn.Linear(w.shape[1], w.shape[0], bias=False).double()
        with torch.no_grad():
            lin.weight.copy_(w)
        layers.append(lin)
        if i < len(weights) - 1:
            layers.append(nn.ReLU(inplace=inplace))
    return nn.Sequential(*layers)


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def _train_torch(model, x, y, batches, optimizer: str, lr: float):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9 if optimizer == "momentum"
                          else 0.0)
    for idx in batches:
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()


# -- exactness against grapes_hw's own engine ----------------------------------------------

@pytest.mark.parametrize("mode", ["propagating", "local"])
@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.1), ("momentum", 0.01)])
def test_torch_mlp_with_grapes_equals_the_engine(digits, mode, optimizer, lr):
    """64-32-32-10 in float64, 20 minibatches, same initial weights and data order.

    The engine's update is ``W -= lr/B delta^T x`` with ``delta = softmax - onehot``: the
    gradient of the batch-mean cross-entropy, i.e. ``F.cross_entropy`` (mean). Its momentum
    ``v <- gamma v + lr g; W <- W - v`` is torch's ``b <- gamma b + g; W <- W - lr b`` with
    ``v = lr b`` (constant lr, no dampening): equal up to rounding."""
    x, y = digits
    cfg = TrainConfig.from_flat(layers=(32, 32), seed=0)
    net = build_network(cfg, FLOAT64, 64, 10)
    w0 = [layer.backend.read().clone() for layer in net.layers]
    assert all(w.dtype == torch.float64 for w in w0)
    learner = Learner(net, BP(net), GrapesParameters(mode=mode), make_optimizer(optimizer, 0.9))
    batches = _batches(x.shape[0], 20)
    for idx in batches:
        learner.step(x[idx].contiguous(), y[idx].contiguous(), lr)
    engine = [layer.backend.read() for layer in net.layers]

    model = _mlp(w0)
    g = GRAPES(model, mode=mode)
    _train_torch(model, x, y, batches, optimizer, lr)
    assert g.layers == _linears(model)
    for w_engine, lin in zip(engine, _linears(model), strict=True):
        torch.testing.assert_close(lin.weight.detach(), w_engine, rtol=1e-12, atol=1e-13)

    plain = _mlp(w0)  # without GRAPES the same run ends far away: the check has teeth
    _train_torch(plain, x, y, batches, optimizer, lr)
    far = max(float((a.weight.detach() - b).abs().max()) for a, b in
              zip(_linears(plain), engine, strict=True))
    assert far > 1e-2


def test_in_place_relu_gives_the_same_gradients(digits):
    """The hook sits on the layer's output; an in-place ReLU after it must not change what
    arrives there (torch hands a hook the gradient of the tensor as it was when hooked)."""
    x, y = digits
    g0 = torch.Generator().manual_seed(5)
    w0 = [torch.randn(s, generator=g0, dtype=torch.float64) * 0.3
          for s in ((32, 64), (32, 32), (10, 32))]
    grads = []
    for inplace in (False, True):
        model = _mlp(w0, inplace=inplace)
        GRAPES(model)
        F.cross_entropy(model(x[:64]), y[:64]).backward()
        grads.append([lin.weight.grad.clone() for lin in _linears(model)])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    plain = _mlp(w0)
    F.cross_entropy(plain(x[:64]), y[:64]).backward()
    assert not torch.allclose(plain[0].weight.grad, grads[1][0])  # GRAPES acted


# -- a conv net against the definition -----------------------------------------------------

class _ScaleGrad(torch.autograd.Function):
    """Reference: identity forward, backward multiplies channel c by m[c] (N, C, H, W)."""

    @staticmethod
    def forward(ctx, a, m):
        ctx.m = m
        return a.view_as(a)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.m[None, :, None, None], None


def _m_by_hand(w: torch.Tensor) -> torch.Tensor:
    """m per filter: L1 norm of each output channel's filter, clip(2 i / max i, 1, 2)."""
    imp = w.detach().abs().sum(dim=(1, 2, 3))
    return torch.clamp(2.0 * imp / imp.max(), min=1.0, max=2.0)


class _CNN(nn.Module):
    def __init__(self):
        super().__init__()
        # Defined head first on purpose: the order GRAPES uses is the forward order.
        self.head = nn.Linear(6 * 6 * 6, 10)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=0, stride=1)

    def forward(self, x, reference_mode=None):
        a1 = self.conv1(x)
        if reference_mode == "propagating":
            a1 = _ScaleGrad.apply(a1, _m_by_hand(self.conv1.weight))
        a2 = self.conv2(F.relu(a1))
        if reference_mode == "propagating":
            a2 = _ScaleGrad.apply(a2, _m_by_hand(self.conv2.weight))
        return self.head(F.relu(a2).flatten(1))


@pytest.mark.parametrize("mode", ["propagating", "local"])
def test_conv_net_matches_the_per_channel_definition(digits, mode):
    x, y = digits
    x = x.reshape(-1, 1, 8, 8)
    torch.manual_seed(0)
    ref = _CNN().double()
    model = copy.deepcopy(ref)
    g = GRAPES(model, mode=mode)
    opt_r = torch.optim.SGD(ref.parameters(), lr=0.05)
    opt_g = torch.optim.SGD(model.parameters(), lr=0.05)
    for idx in _batches(x.shape[0], 5, bs=32):
        opt_r.zero_grad()
        opt_g.zero_grad()
        m = [_m_by_hand(ref.conv1.weight), _m_by_hand(ref.conv2.weight)]  # before the step
        F.cross_entropy(ref(x[idx], reference_mode=mode), y[idx]).backward()
        if mode == "local":  # only each conv's own weight and bias gradient, per channel
            for conv, mc in zip((ref.conv1, ref.conv2), m, strict=True):
                conv.weight.grad.mul_(mc[:, None, None, None])
                conv.bias.grad.mul_(mc)
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt_r.step()
        opt_g.step()
    assert g.layers == [model.conv1, model.conv2, model.head]
    for name, p in ref.named_parameters():
        torch.testing.assert_close(dict(model.named_parameters())[name], p, rtol=1e-12,
                                   atol=1e-14)
    torch.manual_seed(0)
    plain = _CNN().double()
    assert not torch.allclose(plain.conv1.weight, model.conv1.weight, atol=1e-4)


def test_explicit_layers_set_order_and_output_layer(digits):
    """With ``layers=[l0, l1]``, l1 is the output layer (unmodulated) and l2 is left alone."""
    x, y = digits
    w0 = [torch.randn(s, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 0.3
          for s in ((32, 64), (32, 32), (10, 32))]
    plain, model = _mlp(w0), _mlp(w0)
    lins = _linears(model)
    g = GRAPES(model, mode="local", layers=lins[:2])
    for mdl in (plain, model):
        F.cross_entropy(mdl(x[:64]), y[:64]).backward()
    m0 = torch.clamp(2 * w0[0].abs().sum(1) / w0[0].abs().sum(1).max(), 1, 2)
    pl = _linears(plain)
    torch.testing.assert_close(lins[0].weight.grad, pl[0].weight.grad * m0[:, None])
    assert torch.equal(lins[1].weight.grad, pl[1].weight.grad)
    assert torch.equal(lins[2].weight.grad, pl[2].weight.grad)
    assert g.hidden_layers == [lins[0]]


def test_bits_and_lower_reach_the_factor():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(20, 50), nn.ReLU(), nn.Linear(50, 3))
    with torch.no_grad():  # row importances spread over (0.1, 1] of the largest
        model[0].weight.mul_(torch.linspace(0.1, 1.0, 50)[:, None])
    g = GRAPES(model, bits=2)
    model(torch.rand(2, 20))
    (m,) = g.factors()
    levels = torch.tensor([1.0, 4 / 3, 5 / 3, 2.0])
    assert ((m[:, None] - levels[None, :]).abs().min(1).values < 1e-6).all()
    assert len(set(m.tolist())) > 1
    g.remove()
    g = GRAPES(model, lower=None)
    model(torch.rand(2, 20))
    (m,) = g.factors()
    assert float(m.min()) < 1.0 and float(m.max()) == 2.0


def test_bad_settings_name_the_field():
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ConfigError, match="^mode: "):
        GRAPES(model, mode="propagate")
    with pytest.raises(ConfigError, match="^lower: "):
        GRAPES(model, lower=3.0)
    with pytest.raises(ConfigError, match="^bits: "):
        GRAPES(model, bits=0)
    with pytest.raises(TypeError, match="layers\\[0\\]"):
        GRAPES(model, layers=[nn.ReLU()])


# -- remove() -------------------------------------------------------------------------------

def _no_hooks(model: nn.Module) -> bool:
    mods = all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    params = all(not p._backward_hooks for p in model.parameters())
    return mods and params


@pytest.mark.parametrize("mode", ["propagating", "local"])
def test_remove_restores_plain_training_bit_for_bit(digits, mode):
    x, y = digits
    x = x.float().reshape(-1, 1, 8, 8)
    torch.manual_seed(3)
    model = _CNN()
    twin = copy.deepcopy(model)
    g = GRAPES(model, mode=mode)
    batches = _batches(x.shape[0], 6, bs=32)
    _train_torch(model, x, y, batches[:3], "sgd", 0.05)
    _train_torch(twin, x, y, batches[:3], "sgd", 0.05)
    assert not torch.equal(model.conv1.weight, twin.conv1.weight)  # GRAPES did act
    # A graph built while attached, backpropagated after remove(): plain gradients too.
    out = model(x[batches[3]])
    g.remove()
    assert _no_hooks(model)
    twin.load_state_dict(model.state_dict())
    model.zero_grad()
    twin.zero_grad()
    F.cross_entropy(out, y[batches[3]]).backward()
    F.cross_entropy(twin(x[batches[3]]), y[batches[3]]).backward()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)
    _train_torch(model, x, y, batches[4:], "momentum", 0.05)
    _train_torch(twin, x, y, batches[4:], "momentum", 0.05)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_context_manager_detaches():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with GRAPES(model) as g:
        model(torch.rand(1, 3))
        assert len(g.layers) == 2
    assert _no_hooks(model)


# -- aihwkit ----------------------------------------------------------------------------------

def _analog_mlp(rpu_config, bias0: bool = False):
    from aihwkit.nn import AnalogLinear, AnalogSequential

    torch.manual_seed(0)
    return AnalogSequential(AnalogLinear(8, 6, bias=bias0, rpu_config=rpu_config), nn.ReLU(),
                            AnalogLinear(6, 5, bias=False, rpu_config=rpu_config), nn.ReLU(),
                            AnalogLinear(5, 3, bias=False, rpu_config=rpu_config))


def _analog_step(model, mode, x, y, lr=0.5):
    """One AnalogSGD step; returns the weight (and first bias) changes and the weights
    before it."""
    from aihwkit.optim import AnalogSGD

    layers = [m for m in model.children() if hasattr(m, "get_weights")]

    def weights(layer):  # copies: a digital bias comes back as the parameter's own data
        w, b = layer.get_weights()
        return w.clone(), None if b is None else b.clone()

    before = [weights(layer) for layer in layers]
    g = GRAPES(model, mode=mode) if mode else None
    opt = AnalogSGD(model.parameters(), lr=lr)
    opt.regroup_param_groups(model)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    after = [weights(layer) for layer in layers]
    dw = [a[0] - b[0] for a, b in zip(after, before, strict=True)]
    db = None if before[0][1] is None else after[0][1] - before[0][1]
    if g is not None:
        assert g.layers == layers
        g.remove()
    return dw, db, before


def _m_rows(w: torch.Tensor) -> torch.Tensor:
    imp = w.abs().reshape(w.shape[0], -1).sum(1)
    return torch.clamp(2 * imp / imp.max(), 1, 2)


def _fp_config(split: bool = False):
    from aihwkit.simulator.configs import FloatingPointRPUConfig

    cfg = FloatingPointRPUConfig()
    if split:  # several tiles per layer (aihwkit's TileModuleArray)
        cfg.mapping.max_input_size = 4
        cfg.mapping.max_output_size = 2
    return cfg


@needs_aihwkit
@pytest.mark.parametrize("split", [False, True], ids=["one-tile", "tile-array"])
@pytest.mark.parametrize("mode", ["propagating", "local"])
def test_analogsgd_applies_row_scaled_updates_on_a_floating_point_tile(mode, split):
    torch.manual_seed(4)
    x, y = torch.rand(16, 8), torch.randint(0, 3, (16,))
    plain, db_plain, before = _analog_step(_analog_mlp(_fp_config(split), bias0=True), None,
                                           x, y)
    dw, db, again = _analog_step(_analog_mlp(_fp_config(split), bias0=True), mode, x, y)
    w0 = [w for w, _ in before]
    assert all(torch.equal(a, b) for a, b in zip(w0, [w for w, _ in again], strict=True))
    m = [_m_rows(w) for w in w0[:2]]
    # The output layer is not modulated; the hidden layer under it is scaled row by row.
    torch.testing.assert_close(dw[2], plain[2], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(dw[1], plain[1] * m[1][:, None], rtol=1e-5, atol=1e-7)
    assert float((dw[1] - plain[1]).abs().max()) > 1e-3
    if mode == "local":  # every hidden layer: its own m, the digital bias too
        torch.testing.assert_close(dw[0], plain[0] * m[0][:, None], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(db, db_plain * m[0], rtol=1e-5, atol=1e-7)
        assert float(db_plain.abs().max()) > 1e-3
    else:  # the factors compound: layer 0's error carries m0 and, through layer 1, m1
        assert not torch.allclose(dw[0], plain[0] * m[0][:, None], rtol=1e-3, atol=1e-6)
        # and the whole step is the digital one: the same net as nn.Linear layers + GRAPES
        digital = _mlp([w.double() for w in w0])
        digital[0] = nn.Linear(8, 6).double()
        with torch.no_grad():
            digital[0].weight.copy_(w0[0])
            digital[0].bias.copy_(before[0][1])
        GRAPES(digital, mode="propagating")
        F.cross_entropy(digital(x.double()), y).backward()
        for d, lin in zip(dw, _linears(digital), strict=True):
            torch.testing.assert_close(d.double(), -0.5 * lin.weight.grad, rtol=1e-4,
                                       atol=1e-6)
        torch.testing.assert_close(db.double(), -0.5 * digital[0].bias.grad, rtol=1e-4,
                                   atol=1e-6)


@needs_aihwkit
@pytest.mark.parametrize("mode", ["propagating", "local"])
def test_analog_conv_channels_are_scaled(mode):
    from aihwkit.nn import AnalogConv2d, AnalogLinear, AnalogSequential

    def model():
        torch.manual_seed(0)
        return AnalogSequential(AnalogConv2d(1, 4, 3, rpu_config=_fp_config()), nn.ReLU(),
                                nn.Flatten(), AnalogLinear(4 * 6 * 6, 3, rpu_config=_fp_config()))

    torch.manual_seed(2)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 3, (8,))
    plain, _, before = _analog_step(model(), None, x, y)
    w0 = [w for w, _ in before]
    dw, _, _ = _analog_step(model(), mode, x, y)
    m = _m_rows(w0[0])
    assert w0[0].shape == (4, 9)
    torch.testing.assert_close(dw[0], plain[0] * m[:, None], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(dw[1], plain[1], rtol=1e-6, atol=1e-7)


@needs_aihwkit
@pytest.mark.parametrize("config", ["InferenceRPUConfig", "TorchInferenceRPUConfig"])
def test_inference_tile_gradients_are_row_scaled_in_local_mode(config):
    """Inference tiles are trained through a torch gradient (of their shared weights, aihwkit's
    ``use_torch_update``; or of a torch-simulated tile's weight), not through stored errors:
    GRAPES scales that gradient's rows."""
    import aihwkit.simulator.configs as configs

    cfg = getattr(configs, config)()
    cfg.forward.is_perfect = True  # deterministic MVMs
    torch.manual_seed(4)
    x, y = torch.rand(16, 8), torch.randint(0, 3, (16,))
    plain, _, before = _analog_step(_analog_mlp(cfg), None, x, y, lr=0.1)
    w0 = [w for w, _ in before]
    dw, _, _ = _analog_step(_analog_mlp(cfg), "local", x, y, lr=0.1)
    for k in range(2):
        torch.testing.assert_close(dw[k], plain[k] * _m_rows(w0[k])[:, None], rtol=1e-5,
                                   atol=1e-7)
    torch.testing.assert_close(dw[2], plain[2], rtol=1e-6, atol=1e-7)


# -- the Python API: TrainConfig.backend takes objects ---------------------------------------

SMALL = dict(dataset="digits", layers=(32,), epochs=2, train_subset=300, grapes="propagating",
             seed=0)


def _same_training(a: dict, b: dict) -> None:
    assert [e["train_loss"] for e in a["epochs"]] == [e["train_loss"] for e in b["epochs"]]
    assert [e["test_acc"] for e in a["epochs"]] == [e["test_acc"] for e in b["epochs"]]


def test_backend_device_model_object_runs_like_its_toml():
    from grapes_hw.backends.fixed_point import FixedParams

    model = DeviceModel(name="my-fixed6", description="6-bit weights built in Python",
                        backend="fixed", params=FixedParams(bits=6, rounding="stochastic"))
    by_object = run(TrainConfig.from_flat(backend=model, **SMALL))
    by_name = run(TrainConfig.from_flat(backend="fixed6", **SMALL))
    assert set(by_object) == set(by_name)  # the full result, as the CLI writes it
    _same_training(by_object, by_name)
    assert by_object["config"]["backend"] == "my-fixed6"
    assert by_object["device_model"]["name"] == "my-fixed6"
    assert by_object["device_model"]["params"] == by_name["device_model"]["params"]
    assert by_object["pulses_total"] == by_name["pulses_total"] > 0
    json.dumps(by_object)


@needs_aihwkit
def test_backend_rpu_config_object_gives_a_full_result(tmp_path):
    from aihwkit.simulator.configs import FloatingPointRPUConfig
    from aihwkit.simulator.presets import PCMPreset

    from grapes_hw.backends.analog.config import AnalogParams

    toml = tmp_path / "fp.toml"
    toml.write_text('name = "fp"\ndescription = "FloatingPoint tile"\nbackend = "analog"\n'
                    '[analog]\nrpu_config = "FloatingPointRPUConfig"\n')
    by_object = run(TrainConfig.from_flat(backend=FloatingPointRPUConfig(), **SMALL))
    by_path = run(TrainConfig.from_flat(backend=toml, **SMALL))  # a pathlib.Path
    assert set(by_object) == set(by_path)
    _same_training(by_object, by_path)  # a deterministic tile: the same run either way
    assert by_object["config"]["backend"] == "FloatingPointRPUConfig"
    dm = by_object["device_model"]
    assert dm["backend"] == "analog" and dm["params"]["rpu_config"] == "FloatingPointRPUConfig"
    assert dm["extra"]["rpu_config"].startswith("FloatingPointRPUConfig(")
    assert by_path["config"]["backend"] == str(toml)

    # The backend's own settings with the object: arrays of at most 16 x 16 cells.
    split = device_model_from_rpu_config(FloatingPointRPUConfig(), name="fp-16",
                                         params=AnalogParams(tile_size=16))
    r16 = run(TrainConfig.from_flat(backend=split, **SMALL))
    assert r16["config"]["backend"] == "fp-16" and r16["device_model"]["params"]["tile_size"] == 16
    for a, b in zip(r16["epochs"], by_object["epochs"], strict=True):  # partial sums: rounding
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)

    cfg = PCMPreset()
    cfg.forward.out_noise = 0.0123  # a user's own setting
    before = repr(cfg)
    r = run(TrainConfig.from_flat(backend=cfg, **SMALL))
    json.dumps(r)
    assert repr(cfg) == before  # the user's config object is not changed by the run
    assert "out_noise=0.0123" in r["device_model"]["extra"]["rpu_config"]
    assert r["status"] == "ok" and r["best_test_acc"] is not None
    assert r["pulses_total"] > 0 and r["memory"]["device_count"] == 2 * r["memory"]["n_weights"]
    assert r["slowness"] is None or r["slowness"] > 0


def test_backend_of_another_type_names_the_field():
    with pytest.raises(ConfigError, match="^backend: got a int"):
        run(TrainConfig.from_flat(backend=3, **SMALL))


def test_the_torch_submodule_does_not_shadow_torch():
    import grapes_hw
    import grapes_hw.rules.learner
    import grapes_hw.training.train

    assert grapes_hw.training.train.torch is torch and grapes_hw.rules.learner.torch is torch
    assert grapes_hw.torch is not torch and grapes_hw.GRAPES is GRAPES
    assert "GRAPES" in grapes_hw.__all__ and "DeviceModel" in grapes_hw.__all__
