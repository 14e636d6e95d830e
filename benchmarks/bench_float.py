"""One Fashion-MNIST epoch, 784-256-256-256-10 ReLU, batch 64: our float backend vs plain
PyTorch (nn.Linear without bias, autograd, torch.optim.SGD), and GRAPES vs SGD.

Targets (issue 13): our SGD epoch <= 0.7x plain PyTorch's; GRAPES <= 1.10x our SGD. Every
epoch is cut into ``--chunks`` chunks run interleaved across the candidates (rotating order,
``common.interleaved_chunks``); reported are the ratios of the median epoch times over
``--repeats`` epochs and the medians of the per-chunk ratios (paired in time).
Writes benchmarks/results/float_epoch.json (or ``--name``).

    python benchmarks/bench_float.py [--repeats 10] [--subset N] [--threads N]
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    SIZES,
    batches,
    fashion_mnist,
    interleaved_chunks,
    mlp_learner,
    parse_args,
    plain_torch_step,
    summarize,
    write_result,
)


def epoch_ours(x, y, bs, lr, grapes):
    learner = mlp_learner("float32", grapes)
    return batches(x, y, bs, lambda xb, yb: learner.step(xb, yb, lr))


def main() -> int:
    args = parse_args(__doc__, "float_epoch")
    x, y = fashion_mnist(args.subset)
    bs, lr = 64, 0.05
    cands = {
        "plain_torch": batches(x, y, bs, plain_torch_step(SIZES, lr)),
        "ours_sgd": epoch_ours(x, y, bs, lr, "off"),
        "ours_grapes": epoch_ours(x, y, bs, lr, "propagating"),
        "ours_grapes_local": epoch_ours(x, y, bs, lr, "local"),
    }
    for run in cands.values():  # untimed: warm-up
        run(-1, 0, 2)
    load_before = os.getloadavg()
    times, ratios = interleaved_chunks(cands, -(-x.shape[0] // bs), args.repeats, args.chunks,
                                       "ours_sgd")
    s = summarize(times, "plain_torch")
    s["load_before"], s["load_after"] = load_before, os.getloadavg()
    s["chunk_ratio_median_to_ours_sgd"] = {k: statistics.median(v) for k, v in ratios.items()}
    med, cr = s["seconds_median"], s["chunk_ratio_median_to_ours_sgd"]
    s["ours_sgd_over_plain_torch"] = med["ours_sgd"] / med["plain_torch"]
    s["ours_sgd_over_plain_torch_chunk_median"] = 1.0 / statistics.median(
        [a / b for a, b in zip(ratios["plain_torch"], ratios["ours_sgd"], strict=True)])
    s["grapes_over_sgd"] = med["ours_grapes"] / med["ours_sgd"]
    s["grapes_over_sgd_chunk_median"] = cr["ours_grapes"]
    s["grapes_local_over_sgd"] = med["ours_grapes_local"] / med["ours_sgd"]
    s["grapes_local_over_sgd_chunk_median"] = cr["ours_grapes_local"]
    s["targets"] = {"ours_sgd_over_plain_torch": 0.7, "grapes_over_sgd": 1.10}
    s["setup"] = {"dataset": "fashion-mnist", "n_train": int(x.shape[0]), "layers": SIZES,
                  "batch": bs, "repeats": args.repeats, "chunks_per_epoch": args.chunks,
                  "torch_threads": torch.get_num_threads()}
    path = write_result(args.name, s)
    for k, v in med.items():
        print(f"{k:<18} {v:7.3f} s/epoch")
    print(f"ours SGD / plain torch = {s['ours_sgd_over_plain_torch']:.3f} epoch, "
          f"{s['ours_sgd_over_plain_torch_chunk_median']:.3f} paired chunks (target <= 0.7)")
    print(f"GRAPES / SGD          = {s['grapes_over_sgd']:.3f} epoch, "
          f"{s['grapes_over_sgd_chunk_median']:.3f} paired chunks (target <= 1.10)")
    print(f"GRAPES local / SGD    = {s['grapes_local_over_sgd']:.3f} epoch, "
          f"{s['grapes_local_over_sgd_chunk_median']:.3f} paired chunks")
    print(f"load {load_before[0]:.2f} -> {s['load_after'][0]:.2f}, "
          f"{torch.get_num_threads()} torch threads; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
