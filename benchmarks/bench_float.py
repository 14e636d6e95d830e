"""One Fashion-MNIST epoch, 784-256-256-256-10 ReLU, batch 64: our float backend vs plain
PyTorch (nn.Linear without bias, autograd, torch.optim.SGD), and GRAPES vs SGD.

Targets (issue: core): our SGD epoch <= 0.7x plain PyTorch's; GRAPES <= 1.05x our SGD.
``ours_grapes_serial`` is GRAPES with the factors computed the generic way (serial row sums
after the forward pass) instead of on torch's threads right after each layer's MVM.
Writes benchmarks/results/float_epoch.json.

    python benchmarks/bench_float.py [--repeats 3] [--subset N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, summarize, write_result  # noqa: E402

from grapes_hw.credit import BP  # noqa: E402
from grapes_hw.data import load_dataset  # noqa: E402
from grapes_hw.devices import load_device_model  # noqa: E402
from grapes_hw.grapes import GrapesParameters  # noqa: E402
from grapes_hw.learning import Learner  # noqa: E402
from grapes_hw.optim import SGD  # noqa: E402
from grapes_hw.train import TrainConfig, build_network  # noqa: E402

SIZES = [784, 256, 256, 256, 10]


def epoch_plain_torch(x, y, perm, bs, lr):
    layers = []
    for i in range(len(SIZES) - 1):
        layers.append(torch.nn.Linear(SIZES[i], SIZES[i + 1], bias=False))
        if i < len(SIZES) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def run():
        for b in range(0, x.shape[0], bs):
            idx = perm[b:b + bs]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    return run


def epoch_ours(x, y, perm, bs, lr, grapes, fused=True):
    cfg = TrainConfig(dataset="fashion-mnist", layers=tuple(SIZES[1:-1]), seed=0)
    net = build_network(cfg, load_device_model("float32"), SIZES[0], SIZES[-1])
    learner = Learner(net, BP(net), GrapesParameters(mode=grapes), SGD())
    if not fused:  # the generic path: serial row sums after the forward pass
        learner._rowmod = False

    def run():
        for b in range(0, x.shape[0], bs):
            idx = perm[b:b + bs]
            learner.step(x[idx], y[idx], lr)
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--subset", type=int, default=None, help="samples per epoch (default all)")
    args = ap.parse_args()
    data = load_dataset("fashion-mnist", train_subset=args.subset)
    x = torch.from_numpy(np.ascontiguousarray(data.x_train, dtype=np.float32))
    y = torch.from_numpy(data.y_train.astype(np.int64))
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    bs, lr = 64, 0.05
    cands = {
        "plain_torch": epoch_plain_torch(x, y, perm, bs, lr),
        "ours_sgd": epoch_ours(x, y, perm, bs, lr, "off"),
        "ours_grapes": epoch_ours(x, y, perm, bs, lr, "propagating"),
        "ours_grapes_local": epoch_ours(x, y, perm, bs, lr, "local"),
        "ours_grapes_serial": epoch_ours(x, y, perm, bs, lr, "propagating", fused=False),
    }
    times = interleaved(cands, args.repeats)
    s = summarize(times, "plain_torch")
    med = s["seconds_median"]
    s["ours_sgd_over_plain_torch"] = med["ours_sgd"] / med["plain_torch"]
    s["grapes_over_sgd"] = med["ours_grapes"] / med["ours_sgd"]
    s["grapes_local_over_sgd"] = med["ours_grapes_local"] / med["ours_sgd"]
    s["grapes_serial_over_sgd"] = med["ours_grapes_serial"] / med["ours_sgd"]
    s["targets"] = {"ours_sgd_over_plain_torch": 0.7, "grapes_over_sgd": 1.05}
    s["setup"] = {"dataset": "fashion-mnist", "n_train": int(x.shape[0]), "layers": SIZES,
                  "batch": bs, "repeats": args.repeats}
    path = write_result("float_epoch", s)
    for k, v in med.items():
        print(f"{k:<18} {v:7.3f} s/epoch")
    print(f"ours SGD / plain torch = {s['ours_sgd_over_plain_torch']:.3f} (target <= 0.7)")
    print(f"GRAPES / SGD          = {s['grapes_over_sgd']:.3f} (target <= 1.05)")
    print(f"GRAPES local / SGD    = {s['grapes_local_over_sgd']:.3f}")
    print(f"GRAPES serial / SGD   = {s['grapes_serial_over_sgd']:.3f} (factors without "
          "torch's pool)")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
