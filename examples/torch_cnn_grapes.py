"""GRAPES on your own PyTorch CNN: attach ``grapes_hw.torch.GRAPES``, keep your training loop.

The 8x8 digits are reshaped to 1x8x8 images and a small CNN (two 3x3 convolutions, max
pooling, two fully connected layers) is trained with ``torch.optim.SGD`` (momentum 0.9) three
times from the same initial weights and data order: without GRAPES, with propagating GRAPES
and with local GRAPES; the modulated gradients go into the optimizer unchanged. For a
convolution a node is an output channel: its importance is the L1 norm of its filter and its
factor m scales that channel's gradient at every spatial position.

    python examples/torch_cnn_grapes.py            # ~20 s on one core
    python examples/torch_cnn_grapes.py --smoke    # a few seconds (used by the tests)
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch import nn

from grapes_hw.cli.argtypes import positive_int
from grapes_hw.data.datasets import load_dataset
from grapes_hw.torch import GRAPES


class CNN(nn.Module):
    def __init__(self, channels: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.fc = nn.Linear(2 * channels * 4 * 4, 64)
        self.out = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # 8x8 -> 4x4
        return self.out(F.relu(self.fc(x.flatten(1))))


def train(model: nn.Module, grapes: str, x, y, x_test, y_test, *, epochs: int, lr: float,
          seed: int) -> dict:
    g = GRAPES(model, mode=grapes) if grapes != "off" else None
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    order = torch.Generator().manual_seed(seed)
    accs = []
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=order)
        for b in range(0, x.shape[0], 64):
            idx = perm[b:b + 64]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        with torch.no_grad():
            accs.append(float((model(x_test).argmax(1) == y_test).float().mean()))
    layers = [type(m).__name__ for m in g.layers] if g is not None else []
    if g is not None:
        g.remove()  # the model is a plain model again
    return {"grapes": grapes, "test_acc": accs, "best_test_acc": max(accs), "layers": layers,
            "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny run for the tests")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="training epochs (default: 1 with --smoke, else the full run's)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    epochs = args.epochs if args.epochs is not None else (1 if args.smoke else 15)
    d = load_dataset("digits", progress=False)
    n = 256 if args.smoke else d.x_train.shape[0]
    x = torch.from_numpy(d.x_train[:n]).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(d.y_train[:n]).long()
    x_test = torch.from_numpy(d.x_test).reshape(-1, 1, 8, 8)
    y_test = torch.from_numpy(d.y_test).long()
    torch.manual_seed(0)
    initial = CNN(channels=4 if args.smoke else 16)
    results = []
    for grapes in ("off", "propagating", "local"):
        r = train(copy.deepcopy(initial), grapes, x, y, x_test, y_test, epochs=epochs,
                  lr=0.01, seed=1)
        results.append(r)
        curve = " ".join(f"{a:.3f}" for a in r["test_acc"])
        print(f"grapes {grapes:12s} best test acc {r['best_test_acc']:.4f}  "
              f"{r['seconds']:.1f} s  curve: {curve}", flush=True)
    print("GRAPES layers in forward order (the last, the output layer, is not modulated):",
          ", ".join(results[1]["layers"]))
    return results


if __name__ == "__main__":
    main()
