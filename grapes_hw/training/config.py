"""``TrainConfig``: every setting of one training run, grouped the way the data flows.

A run's settings fall into five typed groups: the network (``NetworkConfig``), the data
(``DataConfig``), the learning rule (``RuleConfig``), the device (``DeviceConfig``) and the
run itself (``RunConfig``), plus ``extra`` for extension modules. Every choice is a
``Literal``, so a TOML study or a typo in Python fails with the allowed values.

Outside Python the settings are flat: the CLI's options, a study's ``[base]``/``[axes]`` keys,
``result.json``'s ``config`` and the run keys of committed results all use the field names
alone (``lr``, ``dataset``, ...), which are unique across the groups. ``TrainConfig.from_flat``
and ``TrainConfig.flat`` convert; errors name the field (``lr``), which the CLI turns into its
flag (``--lr``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Literal, get_type_hints

from grapes_hw.backends.registry import DeviceModel, is_rpu_config
from grapes_hw.config import LR_MAX, default_lr, default_lr_text, is_positive_lr, require
from grapes_hw.errors import ConfigError
from grapes_hw.functional.grapes import GrapesMode, GrapesParameters

ModelName = Literal["mlp", "snu", "ssnu", "cnn"]
DatasetName = Literal["digits", "fashion-mnist", "mnist"]
OptimizerName = Literal["sgd", "momentum", "nag", "rmsprop", "adam"]
CreditName = Literal["bp", "fa", "dfa"]
Activation = Literal["relu", "tanh"]
Rounding = Literal["nearest", "stochastic"]

MODELS: tuple[str, ...] = ModelName.__args__  # type: ignore[attr-defined]
"""The network models ``NetworkConfig.model`` takes."""


def _allowed(name: str, value: Any, tp: Any) -> None:
    allowed = tp.__args__
    require(value in allowed, name,
            f"got {value!r}; allowed values: {', '.join(map(str, allowed))}")


@dataclass
class NetworkConfig:
    """The network: which model, its layers and units."""

    model: ModelName = "mlp"
    """Network model: mlp, snu (spiking neural units) or ssnu (soft SNUs), see
    ``grapes_hw.models.snu``, or cnn (convolutional, see ``grapes_hw.models.cnn``)."""
    layers: tuple[int, ...] = (256, 256, 256)
    """Hidden layer widths (number of nodes); input and output sizes come from the data."""
    activation: Activation = "relu"
    """Hidden activation: relu or tanh."""
    bias: bool = False
    """Give every layer a bias (digital, float32)."""
    dropout: float = 0.0
    """Dropout probability of hidden nodes (one node mask per minibatch), in [0, 1)."""
    conv: str | None = None
    """CNN: conv layers ``CHANNELS:KERNEL[:POOL]``, comma-separated (stride 1, "same"
    padding, odd kernels; POOL max (2x2, the default), avg or none); ``layers`` is then the
    dense head. None: ``16:5,32:5`` with model cnn (must be None for the other models)."""
    time_steps: int = 20
    """SNU/sSNU: rate-coding steps N_s per training presentation (the paper uses 20)."""
    test_time_steps: int = 20
    """SNU/sSNU: rate-coding steps N_s at evaluation (the paper uses 300)."""

    def check(self) -> None:
        _allowed("model", self.model, ModelName)
        _allowed("activation", self.activation, Activation)
        require(len(self.layers) >= 1 and all(int(n) > 0 for n in self.layers), "layers",
                f"got {list(self.layers)}; expected positive integers, e.g. 256,256,256")
        require(0 <= self.dropout < 1, "dropout", f"got {self.dropout}; must be in [0, 1)")
        require(self.time_steps >= 1, "time_steps", f"got {self.time_steps}; must be >= 1")
        require(self.test_time_steps >= 1, "test_time_steps",
                f"got {self.test_time_steps}; must be >= 1")


@dataclass
class DataConfig:
    """The data: which dataset, which part of it, where its files are."""

    dataset: DatasetName = "digits"
    """Dataset name: digits, fashion-mnist or mnist."""
    train_subset: int | None = None
    """Train on a seeded random subset of this many samples (None: all)."""
    val_fraction: float = 0.0
    """Fraction of the training set held out as a seeded validation split, in [0, 1)."""
    data_dir: str | None = None
    """Where to look first for dataset files."""
    download: bool = True
    """Allow downloading a missing dataset into the cache."""

    def check(self) -> None:
        from grapes_hw.data.sources import TRAIN_SIZES

        _allowed("dataset", self.dataset, DatasetName)
        require(self.train_subset is None or self.train_subset >= 1, "train_subset",
                f"got {self.train_subset}; must be >= 1")
        n_max = TRAIN_SIZES.get(self.dataset)
        require(self.train_subset is None or n_max is None or self.train_subset <= n_max,
                "train_subset", f"got {self.train_subset}; the {self.dataset} training set "
                                  f"has {n_max} samples, so allowed values are 1..{n_max}")
        require(0 <= self.val_fraction < 1, "val_fraction",
                f"got {self.val_fraction}; must be in [0, 1)")
        n = self.train_subset or n_max
        if n is not None and self.data_dir is None:  # other files may hold other sizes
            from grapes_hw.data.datasets import validation_size

            validation_size(n, self.val_fraction)


@dataclass
class RuleConfig:
    """The learning rule: credit assignment, GRAPES and the optimizer."""

    optimizer: OptimizerName = "sgd"
    """sgd, momentum, nag (Nesterov), rmsprop or adam."""
    credit: CreditName = "bp"
    """Credit assignment: bp, fa or dfa."""
    grapes: GrapesMode = "off"
    """GRAPES modulation: off, local or propagating."""
    lr: float | None = None
    """Learning rate (dimensionless step multiplier); None: the optimizer's default
    (``DEFAULT_LR``: sgd 0.1, momentum/nag 0.01, rmsprop/adam 0.001), see ``resolved_lr``."""
    momentum: float = 0.9
    """Momentum coefficient gamma for momentum and nag (dimensionless, in [0, 1))."""
    lr_matched: bool = False
    """The paper's control: plain SGD with lr times the mean GRAPES factor at init."""
    grapes_lower: float | None = 1.0
    """Lower bound of the GRAPES factor (None: unbounded, the published FA/DFA variant)."""
    grapes_bits: int | None = None
    """Hold the GRAPES factor at this many bits (None: full precision)."""
    grapes_ideal_read: bool = False
    """GRAPES importance from ideal stored weights rather than the hardware read."""
    velocity_bits: int | None = None
    """Momentum/Nesterov velocity held in this many bits of fixed point (2..32; a per-tensor
    power-of-two scale re-chosen each step from max |v|, see
    ``grapes_hw.backends.fixed_point.VelocityFormat``); None: float32."""
    velocity_rounding: Rounding = "nearest"
    """Rounding of the fixed-point velocity: nearest or stochastic (seeded)."""

    def check(self) -> None:
        _allowed("optimizer", self.optimizer, OptimizerName)
        _allowed("credit", self.credit, CreditName)
        _allowed("velocity_rounding", self.velocity_rounding, Rounding)
        require(self.lr is None or is_positive_lr(self.lr), "lr",
                f"got {self.lr!r}; must be a number in (0, {LR_MAX:g}], or unset for the "
                f"optimizer's default ({default_lr_text()})")
        require(0 <= self.momentum < 1, "momentum", f"got {self.momentum}; must be in [0, 1)")
        require(not (self.lr_matched and self.grapes != "off"), "lr_matched",
                "is the SGD control for GRAPES; use it with grapes='off'")
        self.grapes_params().check({"mode": "grapes", "lower": "grapes_lower",
                                    "bits": "grapes_bits"})
        require(self.velocity_bits is None or 2 <= self.velocity_bits <= 32, "velocity_bits",
                f"got {self.velocity_bits}; allowed 2..32 (or none for float32)")
        require(self.velocity_bits is None or self.optimizer in ("momentum", "nag"),
                "velocity_bits",
                f"applies to optimizer 'momentum' or 'nag', got {self.optimizer!r}")

    def resolved_lr(self) -> tuple[float, str]:
        """The learning rate this run trains at and why: ``(lr, "given")``, or with ``lr``
        unset the optimizer's default, ``(DEFAULT_LR[optimizer], "default for <optimizer>")``
        (before ``lr_matched`` scaling)."""
        if self.lr is not None:
            require(is_positive_lr(self.lr), "lr",
                    f"got {self.lr!r}; must be a number in (0, {LR_MAX:g}]")
            return float(self.lr), "given"
        return default_lr(self.optimizer), f"default for {self.optimizer}"

    def grapes_params(self) -> GrapesParameters:
        return GrapesParameters(mode=self.grapes, lower=self.grapes_lower,
                                bits=self.grapes_bits, ideal_read=self.grapes_ideal_read)


@dataclass
class DeviceConfig:
    """The device the weights live on."""

    backend: str | Any = "float32"
    """Device model: a name in ``device_models/`` or a path to a TOML file; from Python also
    a ``grapes_hw.backends.registry.DeviceModel`` or an aihwkit rpu_config object (e.g.
    ``PCMPreset()`` with fields changed; see ``resolve_device_model``). result.json records a
    name (``config.backend``) and the full description (``device_model``)."""
    drift_eval: bool = False
    """Analog inference tiles only: after training, program the weights to the device and
    report test accuracy after 1 s, 1 h, 1 day and 1 year of drift, with global drift
    compensation on and off (result key ``drift``)."""

    def check(self) -> None:
        require(isinstance(self.backend, (str, os.PathLike, DeviceModel))
                or is_rpu_config(self.backend), "backend",
                f"got a {type(self.backend).__name__}; expected a device model name, a path "
                "to a .toml file, a grapes_hw.backends.registry.DeviceModel or an aihwkit "
                "rpu_config object")


@dataclass
class RunConfig:
    """How long and in what order to train."""

    epochs: int = 10
    """Number of passes over the training set."""
    batch_size: int = 64
    """Minibatch size (samples)."""
    seed: int = 0
    """Seed for initialisation, data order, dropout, subsets and device noise."""

    def check(self) -> None:
        require(self.epochs >= 1, "epochs", f"got {self.epochs}; must be >= 1")
        require(self.batch_size >= 1, "batch_size", f"got {self.batch_size}; must be >= 1")
        require(0 <= self.seed < 2**32, "seed", f"got {self.seed}; must be in 0..2**32-1")


GROUPS: dict[str, type] = {"network": NetworkConfig, "data": DataConfig, "rule": RuleConfig,
                           "device": DeviceConfig, "run": RunConfig}
"""TrainConfig's groups: attribute name -> dataclass."""

FIELDS: dict[str, str] = {f.name: g for g, cls in GROUPS.items()
                          for f in dataclasses.fields(cls)}
"""Flat field name -> its group (``"lr"`` -> ``"rule"``); the names are unique."""


@dataclass
class TrainConfig:
    """Every setting of one training run (the CLI's ``train`` options), in five groups.

    ``TrainConfig.from_flat(dataset="fashion-mnist", lr=0.05)`` builds one from the flat
    field names; ``cfg.rule.lr`` reads one; ``cfg.replace(lr=0.02)`` changes some."""

    network: NetworkConfig = field(default_factory=NetworkConfig)
    """The network: model, layers, activation, bias, dropout, conv spec, SNU time steps."""
    data: DataConfig = field(default_factory=DataConfig)
    """The data: dataset, training subset, validation split, data folder."""
    rule: RuleConfig = field(default_factory=RuleConfig)
    """The learning rule: optimizer, credit assignment, GRAPES, learning rate."""
    device: DeviceConfig = field(default_factory=DeviceConfig)
    """The device model the weights live on, and the drift evaluation."""
    run: RunConfig = field(default_factory=RunConfig)
    """Epochs, minibatch size and seed."""
    extra: dict = field(default_factory=dict)
    """Options of extension modules (e.g. SNU parameters under ``snu``), passed through."""

    @classmethod
    def from_flat(cls, **fields: Any) -> TrainConfig:
        """Build from flat field names (``dataset=...``, ``lr=...``, ``extra={...}``); an
        unknown name raises ConfigError naming it."""
        groups: dict[str, dict] = {g: {} for g in GROUPS}
        extra = fields.pop("extra", None)
        for name, value in fields.items():
            g = FIELDS.get(name)
            if g is None:
                from grapes_hw.config import did_you_mean

                raise ConfigError(name, f"unknown field{did_you_mean(name, FIELDS)}; allowed: "
                                        f"{', '.join(FIELDS)}, extra")
            groups[g][name] = value
        out = cls(**{g: GROUPS[g](**kw) for g, kw in groups.items()})
        if extra is not None:
            out.extra = dict(extra)
        return out

    def flat(self) -> dict[str, Any]:
        """The flat fields (``result.json``'s ``config``, the run keys' input), ``extra``
        last; values as stored (``layers`` a tuple, ``backend`` as given)."""
        out: dict[str, Any] = {}
        for g in GROUPS:
            grp = getattr(self, g)
            out.update({f.name: getattr(grp, f.name) for f in dataclasses.fields(grp)})
        out["extra"] = self.extra
        return out

    def replace(self, **fields: Any) -> TrainConfig:
        """A copy with some flat fields changed (``cfg.replace(epochs=3, seed=1)``)."""
        return TrainConfig.from_flat(**{**self.flat(), **fields})

    @staticmethod
    def field_types() -> dict[str, Any]:
        """Flat field name -> its type (``extra``: dict), for studies and the CLI."""
        out: dict[str, Any] = {}
        for cls in GROUPS.values():
            hints = get_type_hints(cls)
            out.update({f.name: hints[f.name] for f in dataclasses.fields(cls)})
        out["extra"] = dict
        return out

    @staticmethod
    def field_doc(name: str) -> str:
        """The docstring of flat field ``name``."""
        from grapes_hw.config import field_docs

        return field_docs(GROUPS[FIELDS[name]]).get(name, "")

    def check(self) -> None:
        from grapes_hw.config import check_types

        for g, cls in GROUPS.items():
            grp = getattr(self, g)
            require(isinstance(grp, cls), g, f"got {grp!r}; expected a {cls.__name__} (or "
                                             "build the config with TrainConfig.from_flat)")
            check_types(grp, skip=("lr",))  # lr: RuleConfig.check names the defaults
            grp.check()
        from grapes_hw.models.cnn import check_config as check_cnn
        from grapes_hw.models.snu import check_config

        if self.network.model != "cnn":
            check_config(self)  # what the spiking models support
        check_cnn(self)  # conv, and what the CNN supports
        check_extra(self)

    def resolved_lr(self) -> tuple[float, str]:
        """See ``RuleConfig.resolved_lr``."""
        return self.rule.resolved_lr()

    def grapes_params(self) -> GrapesParameters:
        return self.rule.grapes_params()


EXTRA_SECTIONS = {"snu": "spiking-unit settings (SNUParams) of model snu or ssnu",
                  "optimizer": "keyword arguments of optimizer rmsprop or adam (e.g. eps)"}
"""The tables ``TrainConfig.extra`` may hold, and what each is for."""


def inactive_fields(flat: dict[str, Any]) -> dict[str, str]:
    """The fields of a run's flat configuration (``TrainConfig.flat()`` or a result's
    ``config``) that change nothing in that run, each with the settings it acts under:
    ``momentum`` for SGD, ``time_steps`` for an MLP, ... (They are valid, and recorded: a
    study's ``[base]`` sets them for a grid whose other runs use them.)"""
    grapes_on = flat.get("grapes", "off") != "off"
    spiking = flat.get("model") in ("snu", "ssnu")
    acts = {  # field -> (acts in this run, where it acts: fields in backquotes)
        "grapes_bits": (grapes_on, "`grapes` local/propagating"),
        "grapes_ideal_read": (grapes_on, "`grapes` local/propagating"),
        "grapes_lower": (grapes_on or bool(flat.get("lr_matched")),
                         "`grapes` local/propagating or `lr_matched`"),
        "momentum": (flat.get("optimizer") in ("momentum", "nag"),
                     "`optimizer` momentum or nag"),
        "velocity_rounding": (flat.get("velocity_bits") is not None, "`velocity_bits`"),
        "activation": (not spiking, "`model` mlp or cnn (spiking units have their own)"),
        "bias": (not spiking, "`model` mlp or cnn"),
        "time_steps": (spiking, "`model` snu or ssnu"),
        "test_time_steps": (spiking, "`model` snu or ssnu"),
        "data_dir": (flat.get("dataset") != "digits",
                     "`dataset` fashion-mnist or mnist (digits comes with scikit-learn)"),
    }
    return {k: where for k, (on, where) in acts.items() if k in flat and not on}


def check_extra(cfg: TrainConfig) -> None:
    """``extra`` holds only tables a run reads: an unknown section, ``snu`` on a model that
    is not spiking, or optimizer options the optimizer does not take fail here, naming the
    key, instead of being recorded and ignored."""
    require(isinstance(cfg.extra, dict), "extra", f"got {cfg.extra!r}; expected a table")
    for name, table in cfg.extra.items():
        require(name in EXTRA_SECTIONS, f"extra.{name}", "unknown section; allowed: "
                + "; ".join(f"{k} ({v})" for k, v in EXTRA_SECTIONS.items()))
        require(isinstance(table, dict), f"extra.{name}", f"got {table!r}; expected a table")
    if "snu" in cfg.extra:  # its keys and values are checked by models.snu.check_config
        require(cfg.network.model in ("snu", "ssnu"), "extra.snu",
                f"applies to model snu or ssnu; got model {cfg.network.model!r}")
    opts = cfg.extra.get("optimizer")
    if opts:
        from grapes_hw.rules.optim import optimizer_options

        allowed = optimizer_options(cfg.rule.optimizer)
        for k in opts:
            require(k in allowed, f"extra.optimizer.{k}",
                    f"not an option of optimizer {cfg.rule.optimizer!r}; allowed: "
                    + (", ".join(allowed) if allowed else "none (its settings are TrainConfig "
                       "fields: lr, momentum, velocity_bits; rmsprop and adam take options)"))
        from grapes_hw.rules.optim import make_optimizer

        try:
            make_optimizer(cfg.rule.optimizer, cfg.rule.momentum, **opts)
        except (TypeError, ValueError) as e:
            raise ConfigError("extra.optimizer", str(e)) from None


__all__ = ["TrainConfig", "NetworkConfig", "DataConfig", "RuleConfig", "DeviceConfig",
           "RunConfig", "MODELS", "FIELDS", "GROUPS"]
