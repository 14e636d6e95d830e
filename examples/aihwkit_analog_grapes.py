"""GRAPES on an aihwkit model trained with aihwkit's own AnalogSGD.

A small MLP of ``AnalogLinear`` layers on a pulsed device (aihwkit's ``EcRamPreset``, an
ECRAM device, with the weights mapped to 0.6 of its conductance range) is trained on the 8x8
digits twice from the same initial weights: plain ``AnalogSGD``, then ``AnalogSGD`` with
``grapes_hw.torch.GRAPES`` attached. Nothing else changes: GRAPES modulates the error each
tile's pulsed update receives. aihwkit's pulse trains and device noise come from its own
unseeded C++ generator, so the numbers vary a little from run to run.

Reported per run: best test accuracy and the write pulses. aihwkit counts pulses only on GPU,
so on CPU they are ESTIMATED as grapes_hw does: ``sum |dW| / dw_min`` over every update, with
dW the change of the stored (unscaled) tile weights and ``dw_min`` the device's nominal step
(stochastic pulse trains, refresh or reset pulses are not counted separately).

    python examples/aihwkit_analog_grapes.py            # ~25 s on one core
    python examples/aihwkit_analog_grapes.py --smoke    # a few seconds (used by the tests)
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from aihwkit.nn import AnalogLinear, AnalogSequential
from aihwkit.optim import AnalogSGD
from aihwkit.simulator.presets import EcRamPreset
from torch import nn

from grapes_hw.cli.argtypes import positive_int
from grapes_hw.data.datasets import load_dataset
from grapes_hw.torch import GRAPES


def make_model(hidden: int, seed: int) -> AnalogSequential:
    torch.manual_seed(seed)  # the same initial weights for both runs
    cfg = EcRamPreset()
    # He-uniform weights use a sliver of the device's range unless mapped onto it.
    cfg.mapping.weight_scaling_omega = 0.6
    return AnalogSequential(
        AnalogLinear(64, hidden, bias=False, rpu_config=cfg), nn.ReLU(),
        AnalogLinear(hidden, hidden, bias=False, rpu_config=cfg), nn.ReLU(),
        AnalogLinear(hidden, 10, bias=False, rpu_config=cfg))


def analog_layers(model: nn.Module) -> list[AnalogLinear]:
    return [m for m in model.modules() if isinstance(m, AnalogLinear)]


def dw_min(layer: AnalogLinear) -> float:
    """The nominal programming step of the layer's device (``rpu_config.device.dw_min``)."""
    tile = next(layer.analog_tiles())
    return float(tile.rpu_config.device.dw_min)


def stored(layer: AnalogLinear) -> torch.Tensor:
    """The tile's weights without the digital output scales: what the conductances hold."""
    return layer.get_weights(apply_weight_scaling=False)[0]


def train(grapes: str, x, y, x_test, y_test, *, hidden: int, epochs: int, lr: float,
          seed: int) -> dict:
    model = make_model(hidden, seed)
    g = GRAPES(model, mode=grapes) if grapes != "off" else None
    opt = AnalogSGD(model.parameters(), lr=lr)
    opt.regroup_param_groups(model)
    layers = analog_layers(model)
    steps = [dw_min(layer) for layer in layers]
    order = torch.Generator().manual_seed(seed + 1)
    pulses, accs = 0.0, []
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(x.shape[0], generator=order)
        for b in range(0, x.shape[0], 64):
            idx = perm[b:b + 64]
            before = [stored(layer) for layer in layers]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            pulses += sum(float((stored(layer) - w).abs().sum()) / s
                          for layer, w, s in zip(layers, before, steps, strict=True))
        model.eval()
        with torch.no_grad():
            accs.append(float((model(x_test).argmax(1) == y_test).float().mean()))
    if g is not None:
        g.remove()
    return {"grapes": grapes, "test_acc": accs, "best_test_acc": max(accs),
            "pulses_estimated": pulses, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny run for the tests")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="training epochs (default: 1 with --smoke, else the full run's)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    epochs = args.epochs if args.epochs is not None else (1 if args.smoke else 10)
    hidden = 16 if args.smoke else 64
    d = load_dataset("digits", progress=False)
    n = 256 if args.smoke else d.x_train.shape[0]
    x, y = torch.from_numpy(d.x_train[:n]), torch.from_numpy(d.y_train[:n]).long()
    x_test, y_test = torch.from_numpy(d.x_test), torch.from_numpy(d.y_test).long()
    results = []
    for grapes in ("off", "propagating"):
        r = train(grapes, x, y, x_test, y_test, hidden=hidden, epochs=epochs, lr=0.05, seed=0)
        results.append(r)
        print(f"grapes {grapes:12s} best test acc {r['best_test_acc']:.4f}  "
              f"pulses (estimated, sum|dW|/dw_min) {r['pulses_estimated']:.3g}  "
              f"{r['seconds']:.1f} s", flush=True)
    return results


if __name__ == "__main__":
    main()
