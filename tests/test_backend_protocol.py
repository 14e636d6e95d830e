"""Every shipped device model builds a backend that implements the protocol and declares its
optional abilities truthfully (backends/base.py)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from grapes_hw.backends.base import Abilities, WeightBackend
from grapes_hw.backends.registry import list_models, load_device_model, make_backend

HAVE_AIHWKIT = importlib.util.find_spec("aihwkit") is not None
MODELS = [p.stem for p in list_models()]


@pytest.mark.parametrize("name", MODELS)
def test_backend_protocol_and_declared_abilities(name):
    model = load_device_model(name)
    if model.backend == "analog" and not HAVE_AIHWKIT:
        pytest.skip("aihwkit is not installed")
    shape = (6, 9)
    b = make_backend(model, shape, seed=0)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=g) * 0.2
    b.program(w)
    assert isinstance(b, WeightBackend) and isinstance(b.abilities, Abilities)
    assert isinstance(b.pulse_unit, str) and b.pulse_unit
    x = torch.rand((4, shape[1]), generator=g)
    assert b.forward(x).shape == (4, shape[0])
    assert b.forward_inference(x).shape == (4, shape[0])
    assert b.backward(torch.randn((4, shape[0]), generator=g)).shape == (4, shape[1])
    assert b.abs_sums(1).shape == (shape[0],) and b.abs_sums(0).shape == (shape[1],)
    assert isinstance(b.write_stats(), dict)
    a = b.abilities
    assert a.store == (callable(getattr(b, "stored", None)) and callable(getattr(b, "store",
                                                                                    None)))
    if a.store:
        assert tuple(b.stored().shape) == shape
    if a.weight_range:
        assert b.weight_range() > 0
    if a.exact_read:
        assert b.read() is b.read()  # the stored tensor itself, no copy
    if a.drift:
        b.program_and_drift(3600.0, compensation=True)
        assert b.forward_inference(x).shape == (4, shape[0])
    assert a.drift == (name == "pcm-inference")


def test_drift_evaluation_refuses_backends_without_drift():
    from grapes_hw.errors import ConfigError
    from grapes_hw.models.mlp import HWLinear, Network

    pytest.importorskip("aihwkit")
    from grapes_hw.training.drift import drift_evaluation

    model = load_device_model("pcm-insitu")
    net = Network([HWLinear(make_backend(model, (4, 6), seed=0))])
    with pytest.raises(ConfigError, match="inference tile"):
        drift_evaluation(net, torch.rand(3, 6), torch.tensor([0, 1, 2]))
