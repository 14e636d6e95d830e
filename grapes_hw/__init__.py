"""grapes_hw: GRAPES, SGD and momentum on float, fixed-point and analog weight backends.

The public API is small:

* ``TrainConfig`` and ``run`` (``grapes_hw.training.config``): one training run -> result dict;
  ``TrainConfig.backend`` is a device model's name, a TOML path, a ``DeviceModel`` or an
  aihwkit rpu_config object;
* ``DeviceModel``, ``load_device_model``, ``resolve_device_model``,
  ``device_model_from_rpu_config`` / ``make_backend`` (``grapes_hw.backends.registry``):
  device models;
* ``GRAPES`` (``grapes_hw.torch``): GRAPES attached to any torch ``nn.Module`` (Linear, Conv2d,
  aihwkit AnalogLinear/AnalogConv2d), for a user's own training loop and optimizer;
* ``WeightBackend`` (``grapes_hw.backends``): the protocol a weight store implements;
* ``modulation_factor`` (``grapes_hw.functional.grapes``): the GRAPES factor as a pure function.

These names are imported on first use (PEP 562), so ``import grapes_hw`` -- and with it
``grapes-hw --help`` -- does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from grapes_hw._version import __version__

_LAZY: dict[str, str] = {
    "TrainConfig": "training.config",
    "run": "training.train",
    "load_device_model": "backends.registry",
    "DeviceModel": "backends.registry",
    "resolve_device_model": "backends.registry",
    "device_model_from_rpu_config": "backends.registry",
    "GRAPES": "torch",
    "make_backend": "backends.registry",
    "GrapesParameters": "functional.grapes",
    "modulation_factor": "functional.grapes",
}
"""Public name -> the submodule defining it."""

__all__ = ["TrainConfig", "run", "load_device_model", "make_backend", "GrapesParameters",
           "modulation_factor", "DeviceModel", "resolve_device_model",
           "device_model_from_rpu_config", "GRAPES", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from grapes_hw.backends.registry import (
        DeviceModel,
        device_model_from_rpu_config,
        load_device_model,
        make_backend,
        resolve_device_model,
    )
    from grapes_hw.functional.grapes import GrapesParameters, modulation_factor
    from grapes_hw.torch import GRAPES
    from grapes_hw.training.config import TrainConfig
    from grapes_hw.training.train import run


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'grapes_hw' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
