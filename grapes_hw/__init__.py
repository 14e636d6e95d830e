"""grapes_hw: GRAPES, SGD and momentum on float, fixed-point and analog weight backends.

The public API is small:

* ``TrainConfig`` and ``run`` (``grapes_hw.train``): one training run -> result dict;
* ``load_device_model`` / ``make_backend`` (``grapes_hw.devices``): device models;
* ``WeightBackend`` (``grapes_hw.backends``): the protocol a weight store implements;
* ``modulation_factor`` (``grapes_hw.grapes``): the GRAPES factor as a pure function.
"""

__version__ = "0.1.0"

from .devices import load_device_model, make_backend  # noqa: E402
from .grapes import GrapesParameters, modulation_factor  # noqa: E402
from .train import TrainConfig, run  # noqa: E402

__all__ = ["TrainConfig", "run", "load_device_model", "make_backend", "GrapesParameters",
           "modulation_factor", "__version__"]
