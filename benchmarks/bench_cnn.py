"""One CNN epoch on Fashion-MNIST (a training subset), batch 64: our float32 CNN vs the same
net in plain PyTorch (nn.Conv2d / nn.Linear without bias, F.max_pool2d, autograd,
torch.optim.SGD), and fixed point (fixed8) vs our float CNN.

Net: the ``--model cnn`` default, conv 16:5 -> ReLU -> 2x2 max pool -> conv 32:5 -> ReLU ->
2x2 max pool -> flatten (1568) -> 256 -> 256 -> 256 -> 10 ("same" padding).

Targets (issue 14): ours_float <= 1.0x plain torch; ours_fixed8 <= 1.5x ours_float.
``ours_float_grapes`` (propagating GRAPES) and ``ours_float_patches`` (the patch path that
analog tiles take: unfold, backend MVMs, fold, forced on the float backend) are reported for
information. Candidates run interleaved in one process, median of ``--repeats``.
Writes benchmarks/results/cnn_epoch.json.

    python benchmarks/bench_cnn.py [--repeats 5] [--subset 3200] [--threads N]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    fashion_mnist,
    interleaved,
    load_average,
    parse_args,
    summarize,
    write_result,
)

from grapes_hw.backends.registry import load_device_model
from grapes_hw.functional.grapes import GrapesParameters
from grapes_hw.rules.cnn import CNNLearner
from grapes_hw.rules.optim import SGD
from grapes_hw.training.config import TrainConfig
from grapes_hw.training.train import build_cnn

CONV = "16:5,32:5"
HEAD = (256, 256, 256)


def epoch_plain_torch(x, y, perm, bs, lr):
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 5, padding=2, bias=False), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 5, padding=2, bias=False), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(1568, 256, bias=False), torch.nn.ReLU(),
        torch.nn.Linear(256, 256, bias=False), torch.nn.ReLU(),
        torch.nn.Linear(256, 256, bias=False), torch.nn.ReLU(),
        torch.nn.Linear(256, 10, bias=False))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x4 = x.view(-1, 1, 28, 28)

    def run():
        for b in range(0, x.shape[0], bs):
            idx = perm[b:b + bs]
            opt.zero_grad()
            loss = F.cross_entropy(model(x4[idx]), y[idx])
            loss.backward()
            opt.step()
    return run


def epoch_ours(x, y, perm, bs, lr, backend="float32", grapes="off", patches=False):
    cfg = TrainConfig.from_flat(dataset="fashion-mnist", model="cnn", conv=CONV, layers=HEAD,
                                seed=0)
    net = build_cnn(cfg, load_device_model(backend), (28, 28), 10)
    if patches:
        for conv in net.convs:
            conv.exact = False
    learner = CNNLearner(net, GrapesParameters(mode=grapes), SGD())

    def run():
        for b in range(0, x.shape[0], bs):
            idx = perm[b:b + bs]
            learner.step(x[idx], y[idx], lr)
    return run


def main() -> int:
    args = parse_args(__doc__, None, repeats=5, chunks=None, subset=3200, extra=lambda ap: (
        ap.add_argument("--no-patches", action="store_true",
                        help="leave out the (slow) patch-path candidate")))
    x, y = fashion_mnist(args.subset)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    bs, lr = 64, 0.05
    cands = {
        "plain_torch": epoch_plain_torch(x, y, perm, bs, lr),
        "ours_float": epoch_ours(x, y, perm, bs, lr),
        "ours_fixed8": epoch_ours(x, y, perm, bs, lr, backend="fixed8"),
        "ours_float_grapes": epoch_ours(x, y, perm, bs, lr, grapes="propagating"),
    }
    if not args.no_patches:
        cands["ours_float_patches"] = epoch_ours(x, y, perm, bs, lr, patches=True)
    for fn in cands.values():  # warm-up: numba compilation, oneDNN primitive caches
        fn()
    load_before = load_average()
    times = interleaved(cands, args.repeats)
    s = summarize(times, "plain_torch")
    med = s["seconds_median"]
    s["ours_float_over_plain_torch"] = med["ours_float"] / med["plain_torch"]
    s["fixed8_over_ours_float"] = med["ours_fixed8"] / med["ours_float"]
    s["grapes_over_ours_float"] = med["ours_float_grapes"] / med["ours_float"]
    if "ours_float_patches" in med:
        s["patches_over_ours_float"] = med["ours_float_patches"] / med["ours_float"]
    # Ratios of the interleaved pairs (same moment, same load), median over the repeats.
    pair = lambda a, b: float(np.median(np.array(times[a]) / np.array(times[b])))  # noqa: E731
    s["paired_ratio_median"] = {"ours_float_over_plain_torch": pair("ours_float", "plain_torch"),
                                "fixed8_over_ours_float": pair("ours_fixed8", "ours_float")}
    s["targets"] = {"ours_float_over_plain_torch": 1.0, "fixed8_over_ours_float": 1.5}
    s["setup"] = {"dataset": "fashion-mnist", "n_train": int(x.shape[0]), "conv": CONV,
                  "padding": "same", "pool": "max 2x2", "head": list(HEAD), "batch": bs,
                  "lr": lr, "optimizer": "sgd", "repeats": args.repeats,
                  "full_epoch_factor": 60000 / x.shape[0]}
    s["load_average"] = {"before": load_before, "after": load_average(),
                         "note": "1/5/15-minute load averages (os.getloadavg) on a shared "
                                 "machine: timings were taken under this load"}
    path = write_result("cnn_epoch", s)
    for k, v in med.items():
        print(f"{k:<20} {v:7.3f} s per {x.shape[0]} samples")
    print(f"ours float / plain torch = {s['ours_float_over_plain_torch']:.3f} (target <= 1.0; "
          f"paired {s['paired_ratio_median']['ours_float_over_plain_torch']:.3f})")
    print(f"fixed8 / ours float      = {s['fixed8_over_ours_float']:.3f} (target <= 1.5; "
          f"paired {s['paired_ratio_median']['fixed8_over_ours_float']:.3f})")
    print(f"GRAPES / ours float      = {s['grapes_over_ours_float']:.3f}")
    if "patches_over_ours_float" in s:
        print(f"patch path / ours float  = {s['patches_over_ours_float']:.3f}")
    print(f"load average before {load_before}, after {s['load_average']['after']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
