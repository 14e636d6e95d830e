"""Training runs: a ``TrainConfig`` in, a result dictionary (``result.json``) out.

``run(config)`` builds the dataset, the network on the chosen device model, the learning
rule, trains for ``epochs`` epochs and returns a JSON-able result with the per-epoch curve,
best/final test accuracy, the plateau-fit slowness, divergence status, optimizer memory,
write pulses and the versions used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from grapes_hw.backends.registry import DeviceModel, is_rpu_config
from grapes_hw.config import default_lr, default_lr_text, is_positive_lr, require
from grapes_hw.functional.grapes import GrapesParameters

MODELS = ("mlp", "snu", "ssnu", "cnn")
"""The network models ``TrainConfig.model`` takes."""


@dataclass
class TrainConfig:
    """Every setting of one training run (the CLI's ``train`` options)."""

    dataset: str = "digits"
    """Dataset name: digits, fashion-mnist or mnist."""
    layers: tuple[int, ...] = (256, 256, 256)
    """Hidden layer widths (number of nodes), input and output sizes come from the data."""
    activation: str = "relu"
    """Hidden activation: relu or tanh."""
    backend: str | Any = "float32"
    """Device model: a name in ``device_models/`` or a path to a TOML file; from Python also a
    ``grapes_hw.backends.registry.DeviceModel`` or an aihwkit rpu_config object (e.g. ``PCMPreset()``
    with fields changed; see ``grapes_hw.backends.registry.resolve_device_model``). result.json records
    a name (``config.backend``) and the full description (``device_model``)."""
    optimizer: str = "sgd"
    """sgd, momentum, nag (Nesterov), rmsprop or adam."""
    grapes: str = "off"
    """GRAPES modulation: off, local or propagating."""
    credit: str = "bp"
    """Credit assignment: bp, fa or dfa."""
    lr: float | None = None
    """Learning rate (dimensionless step multiplier); None: the optimizer's default
    (``DEFAULT_LR``: sgd 0.1, momentum/nag 0.01, rmsprop/adam 0.001), see ``resolved_lr``."""
    momentum: float = 0.9
    """Momentum coefficient gamma for momentum and nag (dimensionless, in [0, 1))."""
    batch_size: int = 64
    """Minibatch size (samples)."""
    epochs: int = 10
    """Number of passes over the training set."""
    seed: int = 0
    """Seed for initialisation, data order, dropout, subsets and device noise."""
    train_subset: int | None = None
    """Train on a seeded random subset of this many samples (None: all)."""
    val_fraction: float = 0.0
    """Fraction of the training set held out as a seeded validation split, in [0, 1)."""
    dropout: float = 0.0
    """Dropout probability of hidden nodes (one node mask per minibatch), in [0, 1)."""
    lr_matched: bool = False
    """The paper's control: plain SGD with lr times the mean GRAPES factor at init."""
    bias: bool = False
    """Give every layer a bias (digital, float32)."""
    grapes_lower: float | None = 1.0
    """Lower bound of the GRAPES factor (None: unbounded, the published FA/DFA variant)."""
    grapes_bits: int | None = None
    """Hold the GRAPES factor at this many bits (None: full precision)."""
    grapes_ideal_read: bool = False
    """GRAPES importance from ideal stored weights rather than the hardware read."""
    data_dir: str | None = None
    """Where to look first for dataset files."""
    download: bool = True
    """Allow downloading a missing dataset into the cache."""
    velocity_bits: int | None = None
    """Momentum/Nesterov velocity held in this many bits of fixed point (2..32; a per-tensor
    power-of-two scale re-chosen each step from max |v|, see
    ``grapes_hw.backends.fixed_point.VelocityFormat``); None: float32."""
    velocity_rounding: str = "nearest"
    """Rounding of the fixed-point velocity: nearest or stochastic (seeded)."""
    model: str = "mlp"
    """Network model: mlp, snu (spiking neural units) or ssnu (soft SNUs), see snu.py, or cnn
    (convolutional, see cnn.py)."""
    conv: str | None = None
    """CNN: conv layers ``CHANNELS:KERNEL[:POOL]``, comma-separated (stride 1, "same"
    padding, odd kernels; POOL max (2x2, the default), avg or none); ``layers`` is then the
    dense head. None: ``16:5,32:5`` with --model cnn (must be None for the other models)."""
    time_steps: int = 20
    """SNU/sSNU: rate-coding steps N_s per training presentation (the paper uses 20)."""
    test_time_steps: int = 20
    """SNU/sSNU: rate-coding steps N_s at evaluation (the paper uses 300)."""
    drift_eval: bool = False
    """Analog inference tiles only: after training, program the weights to the device and
    report test accuracy after 1 s, 1 h, 1 day and 1 year of drift, with global drift
    compensation on and off (result key ``drift``)."""
    extra: dict = field(default_factory=dict)
    """Options of extension modules (e.g. optimizer state precision), passed through."""

    def check(self) -> None:
        from grapes_hw.data.sources import DATASETS

        require(self.dataset in DATASETS, "dataset",
                f"got {self.dataset!r}; allowed values: {', '.join(DATASETS)}")
        require(len(self.layers) >= 1 and all(int(n) > 0 for n in self.layers), "layers",
                f"got {list(self.layers)}; expected positive integers, e.g. 256,256,256")
        require(isinstance(self.backend, (str, os.PathLike, DeviceModel))
                or is_rpu_config(self.backend), "backend",
                f"got a {type(self.backend).__name__}; expected a device model name, a path to "
                "a .toml file, a grapes_hw.backends.registry.DeviceModel or an aihwkit rpu_config object")
        require(self.activation in ("relu", "tanh"), "activation",
                f"got {self.activation!r}; allowed values: relu, tanh")
        require(self.optimizer in ("sgd", "momentum", "nag", "rmsprop", "adam"), "optimizer",
                f"got {self.optimizer!r}; allowed values: sgd, momentum, nag, rmsprop, adam")
        require(self.credit in ("bp", "fa", "dfa"), "credit",
                f"got {self.credit!r}; allowed values: bp, fa, dfa")
        require(self.lr is None or is_positive_lr(self.lr), "lr",
                f"got {self.lr!r}; must be a positive finite number, or unset for the "
                f"optimizer's default ({default_lr_text()})")
        require(0 <= self.momentum < 1, "momentum", f"got {self.momentum}; must be in [0, 1)")
        require(self.batch_size >= 1, "batch_size", f"got {self.batch_size}; must be >= 1")
        require(self.epochs >= 1, "epochs", f"got {self.epochs}; must be >= 1")
        require(self.train_subset is None or self.train_subset >= 1, "train_subset",
                f"got {self.train_subset}; must be >= 1")
        from grapes_hw.data.sources import TRAIN_SIZES

        n_max = TRAIN_SIZES.get(self.dataset)
        require(self.train_subset is None or n_max is None or self.train_subset <= n_max,
                "train_subset", f"got {self.train_subset}; the {self.dataset} training set "
                                  f"has {n_max} samples, so allowed values are 1..{n_max}")
        require(0 <= self.val_fraction < 1, "val_fraction",
                f"got {self.val_fraction}; must be in [0, 1)")
        require(0 <= self.dropout < 1, "dropout", f"got {self.dropout}; must be in [0, 1)")
        require(not (self.lr_matched and self.grapes != "off"), "lr_matched",
                "is the SGD control for GRAPES; use it with grapes='off'")
        self.grapes_params().check({"mode": "grapes", "lower": "grapes_lower",
                                    "bits": "grapes_bits"})
        require(self.velocity_bits is None or 2 <= self.velocity_bits <= 32, "velocity_bits",
                f"got {self.velocity_bits}; allowed 2..32 (or none for float32)")
        require(self.velocity_bits is None or self.optimizer in ("momentum", "nag"),
                "velocity_bits",
                f"applies to optimizer 'momentum' or 'nag', got {self.optimizer!r}")
        require(self.velocity_rounding in ("nearest", "stochastic"), "velocity_rounding",
                f"got {self.velocity_rounding!r}; allowed values: nearest, stochastic")
        require(self.time_steps >= 1, "time_steps", f"got {self.time_steps}; must be >= 1")
        require(self.test_time_steps >= 1, "test_time_steps",
                f"got {self.test_time_steps}; must be >= 1")
        require(self.model in MODELS, "model",
                f"got {self.model!r}; allowed values: {', '.join(MODELS)}")
        from grapes_hw.models.cnn import check_config as check_cnn
        from grapes_hw.models.snu import check_config

        if self.model != "cnn":
            check_config(self)  # what the spiking models support
        check_cnn(self)  # --conv, and what the CNN supports

    def resolved_lr(self) -> tuple[float, str]:
        """The learning rate this run trains at and why: ``(lr, "given")``, or with ``lr``
        unset the optimizer's default, ``(DEFAULT_LR[optimizer], "default for <optimizer>")``
        (before ``lr_matched`` scaling)."""
        if self.lr is not None:
            require(is_positive_lr(self.lr), "lr",
                    f"got {self.lr!r}; must be a positive finite number")
            return float(self.lr), "given"
        return default_lr(self.optimizer), f"default for {self.optimizer}"

    def grapes_params(self) -> GrapesParameters:
        return GrapesParameters(mode=self.grapes, lower=self.grapes_lower,  # type: ignore[arg-type]
                                bits=self.grapes_bits, ideal_read=self.grapes_ideal_read)
