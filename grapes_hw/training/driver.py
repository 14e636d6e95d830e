"""The run loop every model shares: network building, the optimizer, the epoch loop and
the ``result.json`` record (used by ``training.train.run`` with the MLP, SNU and CNN
builders, and by ``continual``; it imports no model builder, so every builder can use it).

``train_loop`` does seeded shuffling, per-epoch records (loss, accuracy, test/validation
accuracy, seconds, pulses and the per-layer device state), divergence (a non-finite loss or
weight stops the run) and Ctrl-C (the partial epoch is kept, the run marked interrupted).
"""

from __future__ import annotations

import functools
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from grapes_hw._version import __version__
from grapes_hw.backends.registry import (
    DeviceModel,
    describe_backend,
    make_backend,
    resolve_device_model,
)
from grapes_hw.config import to_dict
from grapes_hw.errors import ConfigError
from grapes_hw.functional.init import he_uniform
from grapes_hw.models.mlp import HWLinear, Network
from grapes_hw.rules.optim import make_optimizer
from grapes_hw.training.metrics import fit_plateau

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from grapes_hw.training.config import TrainConfig



def versions() -> dict:
    """Versions of the package and its libraries, recorded with every result; ``git``: the
    commit of the grapes_hw checkout the code was imported from (``+dirty`` with uncommitted
    changes to tracked files), so two results of one run key can be told apart by code."""
    out = {"grapes_hw": __version__, "python": platform.python_version(),
           "torch": torch.__version__, "numpy": np.__version__}
    for mod in ("scipy", "sklearn", "numba", "aihwkit"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = getattr(m, "__version__", "?")
    commit = source_commit()
    if commit is not None:
        out["git"] = commit
    return out


@functools.lru_cache(maxsize=1)
def source_commit() -> str | None:
    """The git commit of the checkout holding this package, as of the first call in this
    process (the code it imported); None outside a git checkout or without git."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain",
                                "--untracked-files=no", "--", str(here.parent)],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip()[:12] + ("+dirty" if dirty.stdout.strip() else "")


def build_network(cfg: TrainConfig, model: DeviceModel | Any, n_in: int, n_out: int) -> Network:
    """He-uniform initialised network on ``model``'s backend, seeded by ``cfg.run.seed``.

    ``model``: a ``DeviceModel``, or anything ``TrainConfig.backend`` takes (a name, a TOML
    path, an aihwkit rpu_config object)."""
    model = resolve_device_model(model)
    gen = torch.Generator().manual_seed(cfg.run.seed)
    sizes = [n_in, *[int(n) for n in cfg.network.layers], n_out]
    layers = []
    for i in range(len(sizes) - 1):
        shape = (sizes[i + 1], sizes[i])
        backend = make_backend(model, shape, seed=cfg.run.seed * 1000 + i)
        backend.program(he_uniform(shape, gen))
        layers.append(HWLinear(backend, bias=cfg.network.bias))
    return Network(layers, cfg.network.activation, cfg.network.dropout,  # type: ignore[arg-type]
                   generator=torch.Generator().manual_seed(cfg.run.seed + 7919))


def evaluate(net: Network, x: torch.Tensor, y: torch.Tensor) -> float:
    if x.shape[0] == 0:
        return float("nan")
    return float((net.predict(x) == y).double().mean())


def total_pulses(net: Network) -> int:
    n = 0
    for layer in net.layers:
        n += int(layer.backend.pulses())
        if layer.bias is not None:
            n += int(layer.bias.pulses())
    return n


def pulses_unit(net: Network) -> str:
    """What ``total_pulses`` counts, as the backends declare it (``pulse_unit``); a digital
    bias adds its own writes, e.g. ``cells changed + writes (bias)``."""
    units = list(dict.fromkeys(layer.backend.pulse_unit for layer in net.layers))
    biases = [layer.bias for layer in net.layers if layer.bias is not None]
    if biases:
        units.append(f"{biases[0].pulse_unit} (bias)")
    return " + ".join(units)


def memory_report(net: Network, optimizer, credit) -> dict:
    """Memory costs of ``net`` (and, for ``result_record`` to lift out, its ``pulses_unit``)."""
    reports = [layer.backend.memory() for layer in net.layers]
    return {
        "pulses_unit": pulses_unit(net),
        "n_weights": sum(r.n_weights for r in reports),
        "weight_digital_bytes": sum(r.digital_bytes for r in reports),
        "device_count": sum(r.device_count for r in reports),
        "bits_per_weight": reports[0].bits_per_weight if reports else 0,
        "optimizer_state_bytes": int(optimizer.state_bytes()),
        "feedback_bytes": int(credit.state_bytes()),
        "grapes_state_bytes": 0,
    }


def build_optimizer(cfg: TrainConfig):
    """The optimizer ``cfg`` asks for, with its digital state format (shared by the MLP, SNU
    and continual-learning runs)."""
    opt_kw = dict(cfg.extra.get("optimizer", {}))
    if cfg.rule.velocity_bits is not None:
        from grapes_hw.backends.fixed_point import VelocityFormat

        opt_kw["state_format"] = VelocityFormat(
            cfg.rule.velocity_bits, cfg.rule.velocity_rounding, seed=cfg.run.seed + 611953)  # type: ignore[arg-type]
        opt_kw["state_bits"] = cfg.rule.velocity_bits
    return make_optimizer(cfg.rule.optimizer, cfg.rule.momentum, **opt_kw)


EpochCallback = Callable[[dict], None]



def train_loop(learner, net, cfg: TrainConfig, lr: float, x_train, y_train, evaluate_fn,
               x_test, y_test, x_val, y_val, *, progress: bool = False,
               on_epoch: EpochCallback | None = None) -> tuple[list[dict], str, int | None]:
    """The epoch loop shared by every model: seeded shuffling, per-epoch records (loss,
    accuracy, test/val accuracy via ``evaluate_fn(x, y)``, seconds, pulses), divergence (a
    non-finite loss or weight stops the run) and Ctrl-C (the partial epoch is kept).
    Returns ``(epochs, status, diverged_epoch)``."""
    order_gen = torch.Generator().manual_seed(cfg.run.seed + 15485863)
    n = x_train.shape[0]
    bs = cfg.run.batch_size
    n_batches = math.ceil(n / bs)
    epochs: list[dict] = []
    status, diverged_epoch, interrupted = "ok", None, False
    pulses_before = total_pulses(net)
    layers_before = [_layer_counters(layer) for layer in net.layers]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.run.epochs * n_batches, unit="batch", leave=False,
                   disable=not sys.stderr.isatty())
    try:
        for epoch in range(1, cfg.run.epochs + 1):
            if interrupted:
                break
            t0 = time.perf_counter()
            perm = torch.randperm(n, generator=order_gen)
            loss_sum, correct, seen = 0.0, 0, 0
            try:
                for b in range(n_batches):
                    idx = perm[b * bs:(b + 1) * bs]
                    loss, c = learner.step(x_train[idx], y_train[idx], lr)
                    loss_sum += loss
                    correct += c
                    seen += idx.shape[0]
                    if not math.isfinite(loss):
                        break
                    if bar is not None:
                        bar.update(1)
            except KeyboardInterrupt:
                # Keep what is done: this epoch is recorded as partial, the run as interrupted.
                interrupted, status = True, "interrupted"
                if seen == 0:
                    break
            seconds = time.perf_counter() - t0
            finite = math.isfinite(loss_sum) and all(
                bool(torch.isfinite(layer.backend.read()).all()) for layer in net.layers)
            pulses_now = total_pulses(net)
            rec = {
                "epoch": epoch,
                "train_loss": loss_sum / max(seen, 1) if finite else None,
                "train_acc": correct / max(seen, 1),
                "test_acc": evaluate_fn(x_test, y_test) if finite else None,
                "seconds": seconds,
                "pulses": pulses_now - pulses_before,
            }
            pulses_before = pulses_now
            rec["layers"], layers_before = _layer_records(net, learner, layers_before)
            if seen < n:
                rec["partial"] = True
            if x_val.shape[0]:
                rec["val_acc"] = evaluate_fn(x_val, y_val) if finite else None
            epochs.append(rec)
            if on_epoch is not None:
                on_epoch(rec)
            if not finite:
                status, diverged_epoch = "diverged", epoch
                break
    finally:
        if bar is not None:
            bar.close()
    return epochs, status, diverged_epoch

def _layer_counters(layer) -> dict:
    return {"pulses": int(layer.backend.pulses()), **layer.backend.write_stats()}


def _layer_records(net, learner, before: list[dict]) -> tuple[list[dict], list[dict]]:
    """Per layer, for one epoch: ``pulses`` (in the backend's unit), and where the backend
    keeps device state ``writes``, ``write_repeats`` (write-verify) and ``near_saturation``
    (at the epoch's end); per hidden layer with GRAPES the factor summary of
    ``FactorStats.pop``."""
    factors = learner.stats.pop()
    now = [_layer_counters(layer) for layer in net.layers]
    out = []
    for l, (a, b) in enumerate(zip(before, now, strict=True)):
        rec: dict = {"pulses": b["pulses"] - a["pulses"]}
        for k in ("writes", "write_repeats"):
            if k in b:
                rec[k] = b[k] - a[k]
        if "near_saturation" in b:
            rec["near_saturation"] = b["near_saturation"]
        if l < len(factors) and factors[l] is not None:
            rec.update(factors[l])
        out.append(rec)
    return out, now


def result_record(cfg, model, data, splits, epochs: list[dict], status: str,
                  diverged_epoch, optimizer, memory: dict, lr: float, lr_scale: float,
                  drift, t_start: float, extra_config: dict | None = None) -> dict:
    """The ``result.json`` of one run (MLP or SNU): resolved config, per-epoch records, best
    and final test accuracy, plateau fit, status, memory and pulse costs, versions."""
    x_train, x_test, x_val = splits
    tests = [e["test_acc"] for e in epochs if e["test_acc"] is not None]
    fit = fit_plateau(tests, n_classes=data.n_classes)
    memory = dict(memory)
    unit = memory.pop("pulses_unit", None)
    # A DeviceModel or rpu_config object as backend is recorded by name (JSON-able); what it
    # is, in full, is the record's "device_model".
    config = to_dict(cfg.replace(backend=describe_backend(cfg.device.backend)).flat())
    config["layers"] = [int(v) for v in cfg.network.layers]
    config["lr"], config["lr_source"] = cfg.resolved_lr()
    config["lr_effective"] = lr
    config["lr_scale"] = lr_scale
    config.update(extra_config or {})
    return {
        "config": config,
        "device_model": model.to_dict(),
        "dataset": {"name": data.name, "source": data.source, "n_train": int(x_train.shape[0]),
                    "n_test": int(x_test.shape[0]), "n_val": int(x_val.shape[0]),
                    "n_classes": int(data.n_classes)},
        "epochs": epochs,
        "best_test_acc": max(tests) if tests else None,
        # a diverged run ends with non-finite weights: it has no final accuracy
        "final_test_acc": tests[-1] if tests and status != "diverged" else None,
        "slowness": fit["slowness"] if fit["ok"] else None,
        "plateau_fit": fit,
        "status": status,
        "diverged_epoch": diverged_epoch,
        "optimizer_state_bytes": int(optimizer.state_bytes()),
        "memory": memory,
        "pulses_total": sum(e["pulses"] for e in epochs),
        "pulses_unit": unit,
        "drift": drift,
        "seconds_total": time.perf_counter() - t_start,
        "versions": versions(),
    }


# ---- the one run driver ------------------------------------------------------------------
@dataclass
class ModelRun:
    """What a model's builder hands the driver (see ``run_model``)."""

    net: Any
    """The network (``layers`` hold the backends; ``n_hidden``)."""
    learner: Any
    """``learner.step(x, y, lr) -> (loss, correct)`` and ``learner.stats`` (FactorStats)."""
    evaluate: Callable[[torch.Tensor, torch.Tensor], float]
    """Test-time accuracy of ``(x, y)``."""
    importances: Callable[[], list[torch.Tensor]]
    """Per hidden layer, the GRAPES importance now (for the lr-matched control)."""
    feedback: Any
    """Whatever reports the credit assignment's digital state (``state_bytes()``)."""
    extra_config: dict = field(default_factory=dict)
    """Model-specific settings recorded in ``result.json``'s config."""
    drift: bool = True
    """Whether ``drift_eval`` applies to this model."""


Builder = Callable[..., ModelRun]
"""``builder(cfg, device_model, data, x_train, optimizer) -> ModelRun``."""


def run_model(cfg: TrainConfig, builder: Builder, *, progress: bool = False,
              on_epoch: EpochCallback | None = None, dataset=None) -> dict:
    """One training run of any model: the data, the device model, the optimizer, the learning
    rate (with the lr-matched scaling), the epoch loop, the drift evaluation and the result
    record are the same for every model; ``builder`` makes the network and its learner."""
    from grapes_hw.data.datasets import load_dataset
    from grapes_hw.functional.grapes import mean_factor

    cfg.check()
    model = resolve_device_model(cfg.device.backend)
    torch.manual_seed(cfg.run.seed)
    data = dataset or load_dataset(cfg.data.dataset, data_dir=cfg.data.data_dir,
                                   train_subset=cfg.data.train_subset,
                                   val_fraction=cfg.data.val_fraction,
                                   seed=cfg.run.seed, download=cfg.data.download, progress=progress)

    def as_t(a, dt):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=dt))

    x_train, y_train = as_t(data.x_train, np.float32), as_t(data.y_train, np.int64)
    x_test, y_test = as_t(data.x_test, np.float32), as_t(data.y_test, np.int64)
    x_val, y_val = as_t(data.x_val, np.float32), as_t(data.y_val, np.int64)
    optimizer = build_optimizer(cfg)
    m = builder(cfg, model, data, x_train, optimizer)
    if cfg.device.drift_eval:  # before training, not after it
        if not m.drift:
            raise ConfigError("drift_eval", f"applies to models mlp and cnn, not "
                                            f"{cfg.network.model!r}")
        from grapes_hw.training.drift import check_drift_layers

        check_drift_layers(m.net)

    (lr, _), lr_scale = cfg.resolved_lr(), 1.0
    if cfg.rule.lr_matched:
        lr_scale = mean_factor(m.importances(), cfg.rule.grapes_lower)
        lr = lr * lr_scale

    t_start = time.perf_counter()
    epochs, status, diverged_epoch = train_loop(
        m.learner, m.net, cfg, lr, x_train, y_train, m.evaluate, x_test, y_test, x_val, y_val,
        progress=progress, on_epoch=on_epoch)
    drift = None
    if cfg.device.drift_eval and m.drift and status == "ok":
        from grapes_hw.training.drift import drift_evaluation

        drift = drift_evaluation(m.net, x_test, y_test, seed=cfg.run.seed)
    return result_record(cfg, model, data, (x_train, x_test, x_val), epochs, status,
                         diverged_epoch, optimizer, memory_report(m.net, optimizer, m.feedback),
                         lr, lr_scale, drift, t_start, m.extra_config)
