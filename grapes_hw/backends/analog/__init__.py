"""IBM aihwkit analog tiles as a weight backend: the rpu_config builder (``config``), one tile
(``tile``) and a layer split over several arrays (``array``). aihwkit is imported on first
use."""

from grapes_hw.backends.analog.array import SplitAnalogBackend, make_analog
from grapes_hw.backends.analog.config import AnalogParams, build_rpu_config
from grapes_hw.backends.analog.tile import AnalogTileBackend

__all__ = ["AnalogParams", "AnalogTileBackend", "SplitAnalogBackend", "build_rpu_config",
           "make_analog"]
