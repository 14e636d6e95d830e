"""Bad input through the Python API: a ConfigError naming the field, or a ValueError/TypeError
naming the argument; never a silent wrong result (a setting ignored, the wrong cells written,
a factor applied twice) or an error from deep inside torch or numpy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from grapes_hw.backends.fixed_point import FixedParams, FixedPointBackend
from grapes_hw.backends.float_backend import FloatBackend, FloatParams
from grapes_hw.backends.registry import DeviceModel, resolve_device_model
from grapes_hw.errors import ConfigError
from grapes_hw.functional.grapes import GrapesParameters, modulation_factor
from grapes_hw.models.conv import HWConv2d
from grapes_hw.models.mlp import HWLinear
from grapes_hw.training.config import TrainConfig
from grapes_hw.training.train import run

TINY = dict(dataset="digits", layers=(8,), epochs=1, train_subset=128, download=False)


def refused(field: str, **kw) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_flat(**{**TINY, **kw}).check()
    assert e.value.field == field, e.value
    return e.value


@pytest.mark.parametrize("field, value", [
    ("bias", "no"), ("lr_matched", "no"), ("download", "no"), ("epochs", 1.5),
    ("epochs", True), ("batch_size", 32.5), ("seed", 1.5), ("seed", 2**70),
    ("momentum", "0.9"), ("dropout", None), ("train_subset", "100"), ("data_dir", 5),
])
def test_train_config_fields_have_their_types(field, value):
    kw = {"dataset": "mnist"} if field == "data_dir" else {}
    refused(field, **{field: value, **kw})


def test_layers_must_be_positive_integers():
    assert refused("layers[0]", layers=(8.9,)).message.endswith("expected an integer")
    refused("layers[0]", layers=(True,))
    refused("layers", layers="64,64")
    TrainConfig.from_flat(**{**TINY, "layers": [8, 8]}).check()  # a list is a sequence too


def test_a_group_of_the_wrong_type_is_named():
    with pytest.raises(ConfigError) as e:
        TrainConfig(rule={"lr": 0.1}).check()
    assert e.value.field == "rule" and "RuleConfig" in e.value.message


def test_a_study_grid_may_set_what_only_some_of_its_runs_use():
    """A [base] momentum or grapes_lower crossing an optimizer or grapes axis is a valid grid:
    the Python/study config accepts it (the CLI refuses such options typed for one run)."""
    for kw in (dict(grapes_lower=0.3), dict(optimizer="sgd", momentum=0.5),
               dict(grapes="off", lr_matched=True, grapes_lower=0.5),
               dict(grapes="propagating", grapes_bits=4)):
        TrainConfig.from_flat(**{**TINY, **kw}).check()
    refused("grapes_bits", grapes="propagating", grapes_bits=2.5)


def test_run_takes_only_a_train_config():
    with pytest.raises(TypeError, match="TrainConfig"):
        run(dict(TINY))


# ---- device models built in Python ---------------------------------------------------------
@pytest.mark.parametrize("kw, field", [
    (dict(backend="fixd", params=FixedParams()), "backend.backend"),
    (dict(backend="fixed", params=None), "backend.params"),
    (dict(backend="fixed", params=FloatParams()), "backend.params"),
    (dict(backend="fixed", params={"bits": 4}), "backend.params"),
    (dict(backend="fixed", params=FixedParams(w_max_factor="2")), "backend.params.w_max_factor"),
    (dict(backend="float", params=FloatParams(dtype="float16")), "backend.params.dtype"),
])
def test_device_model_built_in_python_is_checked(kw, field):
    with pytest.raises(ConfigError) as e:
        resolve_device_model(DeviceModel(name="m", description="", **kw))
    assert e.value.field == field, e.value


def test_documented_factory_signature_trains():
    """docs/torch_api.md: ``factory(shape, params, seed)`` returns the layer's backend."""
    shapes = []

    def factory(shape, params, seed):
        shapes.append(tuple(shape))
        return FloatBackend(shape, params)

    model = DeviceModel(name="mine", description="", backend="float", params=FloatParams(),
                        factory=factory)
    r = run(TrainConfig.from_flat(**TINY, backend=model))
    assert r["status"] == "ok" and shapes == [(8, 64), (10, 8)]


# ---- backends: writes of the wrong shape fail, they never land in other cells ----------------
def test_fixed_point_update_of_the_wrong_width_fails_and_writes_nothing():
    b = FixedPointBackend((4, 8), FixedParams(rounding="nearest"))
    b.program(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)) * 0.3)
    before = b.q.clone()
    with pytest.raises(ValueError, match=r"expected x of shape \(B, 8\)"):
        b.update(torch.ones(2, 5), torch.ones(2, 4), 0.5)
    with pytest.raises(ValueError, match="update"):
        b.update(torch.ones(2, 8), torch.ones(3, 4), 0.5)
    assert torch.equal(b.q, before)


def test_fixed_point_refuses_nan_weights():
    w = torch.zeros(4, 8)
    w[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        FixedPointBackend((4, 8)).program(w)


def test_float_backend_writes_do_not_broadcast():
    b = FloatBackend((4, 8))
    for call, arg in ((b.store, torch.ones(8)), (b.increment, torch.tensor(1.0)),
                      (b.program, torch.ones(8, 4))):
        with pytest.raises(ValueError, match="expected shape"):
            call(arg)
    with pytest.raises(ValueError, match="update"):
        b.update(torch.ones(2, 4), torch.ones(2, 4), 0.1)
    assert torch.equal(b.w, torch.zeros(4, 8))


# ---- GRAPES parameters and the factor ------------------------------------------------------
def test_grapes_parameters_built_in_python_are_checked_by_the_learner():
    from grapes_hw.rules.credit import make_credit
    from grapes_hw.rules.learner import Learner
    from grapes_hw.rules.optim import SGD
    from grapes_hw.training.driver import build_network

    cfg = TrainConfig.from_flat(**TINY)
    net = build_network(cfg, resolve_device_model("float32"), 64, 10)
    credit = make_credit("bp", net, torch.Generator().manual_seed(0))
    for bad, field in ((GrapesParameters(mode="propagate"), "mode"),
                       (GrapesParameters(mode="local", lower=5.0), "lower"),
                       (GrapesParameters(mode="local", lower=True), "lower"),
                       (GrapesParameters(mode="local", bits=2.5), "bits")):
        with pytest.raises(ConfigError) as e:
            Learner(net, credit, bad, SGD())
        assert e.value.field == field


@pytest.mark.parametrize("importance, kw", [
    (torch.tensor([1.0, 2.0, 4.0]), dict(lower=float("nan"))),
    (torch.tensor([1.0, 2.0, 4.0]), dict(lower=3.0)),
    (torch.tensor([1.0, 2.0, 4.0]), dict(bits=0)),
    (torch.tensor([]), {}),
])
def test_modulation_factor_refuses_what_has_no_factor(importance, kw):
    with pytest.raises(ValueError, match="modulation_factor"):
        modulation_factor(importance, **kw)


# ---- the torch API -----------------------------------------------------------------------
def mlp():
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def test_grapes_attaches_once_per_model():
    from grapes_hw.torch import GRAPES

    m = mlp()
    g = GRAPES(m)
    with pytest.raises(ConfigError, match="already attached"):
        GRAPES(m)
    with pytest.raises(ConfigError, match="already attached"):
        GRAPES(m[0:3])  # a part of the model shares its layers: they would be scaled twice
    g.remove()
    GRAPES(m).remove()  # after remove() it may be attached again


@pytest.mark.parametrize("mode", ["propagating", "local"])
def test_a_copy_or_pickle_of_a_model_with_grapes_is_a_plain_model(mode):
    """A deepcopy kept GRAPES' hooks (modulated after remove(), twice with a new GRAPES) and
    torch.save failed on its weak references."""
    import copy
    import io

    from grapes_hw.torch import GRAPES

    torch.manual_seed(0)
    x, y = torch.randn(6, 8), torch.tensor([0, 1, 2, 0, 1, 2])

    def grad(model):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        return model[0].weight.grad.clone()

    m = mlp()
    plain = grad(m)
    g = GRAPES(m, mode=mode)
    modulated = grad(m)
    assert not torch.allclose(modulated, plain)  # GRAPES acts on this model
    c = copy.deepcopy(m)
    buf = io.BytesIO()
    torch.save(m, buf)
    g.remove()
    assert torch.equal(grad(c), plain)  # the copy trains as the plain model
    with GRAPES(c, mode=mode):  # and takes a GRAPES of its own, applied once
        assert torch.allclose(grad(c), modulated)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(grad(loaded), plain)


def test_local_mode_on_a_lazy_layer_says_to_run_a_forward_pass_first():
    from grapes_hw.torch import GRAPES

    lazy = nn.Sequential(nn.LazyLinear(5), nn.ReLU(), nn.Linear(5, 3))
    with pytest.raises(ConfigError, match="forward pass") as e:
        GRAPES(lazy, mode="local")
    assert e.value.field == "mode"
    lazy(torch.randn(2, 4))
    GRAPES(lazy, mode="local").remove()


def test_grapes_refuses_what_it_could_not_modulate():
    from grapes_hw.torch import GRAPES

    with pytest.raises(ConfigError, match="at least one hidden layer"):
        GRAPES(nn.Sequential(nn.Linear(8, 3)))
    m = mlp()
    with pytest.raises(ConfigError) as e:
        GRAPES(m, layers=[nn.Linear(8, 8), m[4]])
    assert e.value.field == "layers[0]"
    with pytest.raises(ConfigError):
        GRAPES(mlp(), lower=True)


def test_local_grapes_refuses_tied_weights_and_skips_frozen_ones():
    from grapes_hw.torch import GRAPES

    a, b = nn.Linear(8, 8), nn.Linear(8, 8)
    b.weight = a.weight
    tied = nn.Sequential(a, nn.ReLU(), b, nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(ConfigError, match="tied weights"):
        GRAPES(tied, mode="local")
    GRAPES(tied, mode="propagating").remove()  # per-use output errors: well defined
    m = mlp()
    m[0].weight.requires_grad_(False)
    with GRAPES(m, mode="local"):
        m(torch.randn(4, 8)).sum().backward()
    assert m[0].weight.grad is None and m[2].weight.grad is not None


# ---- layers --------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(stride=0), dict(stride=1.5), dict(padding=-1),
                                dict(kernel_size=3.7), dict(kernel_size=(3,)),
                                dict(padding="same")])
def test_hwconv2d_geometry_is_checked(kw):
    args = dict(kernel_size=3, **{k: v for k, v in kw.items() if k != "kernel_size"})
    if "kernel_size" in kw:
        args["kernel_size"] = kw["kernel_size"]
    with pytest.raises(ValueError, match="HWConv2d"):
        HWConv2d(FloatBackend((4, 18)), 2, **args)


@pytest.mark.parametrize("exact", [True, False])
def test_hwconv2d_inputs_are_checked(exact):
    conv = HWConv2d(FloatBackend((4, 18)), 2, 3, exact=exact)
    for x in (torch.ones(2, 128), torch.ones(2, 8, 8), torch.ones(2, 3, 8, 8),
              torch.ones(1, 2, 8, 8, dtype=torch.int64), torch.ones(1, 2, 2, 2)):
        with pytest.raises(ValueError, match="HWConv2d"):
            conv.forward(x)


def test_hwlinear_refuses_integer_or_misshaped_inputs():
    layer = HWLinear(FixedPointBackend((4, 8)))
    for x in (torch.ones(2, 8, dtype=torch.int64), torch.ones(2, 7)):
        with pytest.raises(ValueError, match="HWLinear"):
            layer.forward(x)
