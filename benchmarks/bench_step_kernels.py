"""The bundle of three numba step kernels (``grapes_hw/kernels/step.py``: ``softmax_xent``,
``act_grad_scale``, ``row_abs_sums``) on and off: one Fashion-MNIST epoch,
784-256-256-256-10 ReLU, batch 64, as ``bench_float.py``.

Candidates: ``plain_torch`` (nn.Linear without bias, autograd, torch.optim.SGD), ``sgd_off``
/ ``sgd_on`` (our float SGD with ``_step_kernels.ENABLED`` False / True) and ``grapes_off`` /
``grapes_on`` (GRAPES propagating). The switch is set inside each candidate's chunk runner,
so every chunk runs with its own setting. Every epoch is cut into ``--chunks`` chunks run
interleaved across the candidates (rotating order, ``common.interleaved_chunks``); reported
are the ratios of median epoch times over ``--repeats`` epochs and the medians of the
paired per-chunk ratios. Rule (benchmarks/README.md): worth keeping only if kernels-on is at
least 10% faster (on / off <= 1/1.1 = 0.909). Targets (issue 13): our SGD <= 0.7x plain
PyTorch; GRAPES <= 1.10x our SGD. Writes benchmarks/results/step_kernels.json (or ``--name``).

    python benchmarks/bench_step_kernels.py [--repeats 10] [--subset N] [--threads 1]
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

from grapes_hw.kernels import step as _step_kernels  # noqa: E402


def epoch_ours(x, y, bs, lr, grapes, kernels: bool):
    learner = mlp_learner("float32", grapes)

    def switch() -> None:  # the bundle on or off for this candidate's chunks
        _step_kernels.ENABLED = kernels

    return batches(x, y, bs, lambda xb, yb: learner.step(xb, yb, lr), switch)


def _paired(ratios, num, den):
    """Median over chunks of t[num] / t[den] (both ratios are to the same reference)."""
    return statistics.median(a / b for a, b in zip(ratios[num], ratios[den], strict=True))


def main() -> int:
    args = parse_args(__doc__, "step_kernels")
    x, y = fashion_mnist(args.subset)
    bs, lr = 64, 0.05
    cands = {
        "plain_torch": batches(x, y, bs, plain_torch_step(SIZES, lr)),
        "sgd_off": epoch_ours(x, y, bs, lr, "off", False),
        "sgd_on": epoch_ours(x, y, bs, lr, "off", True),
        "grapes_off": epoch_ours(x, y, bs, lr, "propagating", False),
        "grapes_on": epoch_ours(x, y, bs, lr, "propagating", True),
    }
    for run in cands.values():  # untimed: warm-up (and numba compile / cache load)
        run(-1, 0, 2)
    load_before = os.getloadavg()
    times, ratios = interleaved_chunks(cands, -(-x.shape[0] // bs), args.repeats, args.chunks,
                                       "sgd_off")
    load_after = os.getloadavg()
    _step_kernels.ENABLED = True
    s = summarize(times, "plain_torch", ratios)
    s["load_before"], s["load_after"] = load_before, load_after
    s["chunk_ratio_all_to_sgd_off"] = ratios  # for pooling runs
    med = s["seconds_median"]
    pair = {  # name: (numerator, denominator)
        "sgd_on_over_off": ("sgd_on", "sgd_off"),
        "grapes_on_over_off": ("grapes_on", "grapes_off"),
        "sgd_off_over_plain_torch": ("sgd_off", "plain_torch"),
        "sgd_on_over_plain_torch": ("sgd_on", "plain_torch"),
        "grapes_over_sgd_off": ("grapes_off", "sgd_off"),
        "grapes_over_sgd_on": ("grapes_on", "sgd_on"),
    }
    s["ratios"] = {k: {"epoch_median": med[a] / med[b],
                       "paired_chunk_median": _paired(ratios, a, b),
                       "paired_epoch_median": statistics.median(
                           p / q for p, q in zip(times[a], times[b], strict=True))}
                   for k, (a, b) in pair.items()}
    r = s["ratios"]
    s["verdict"] = {
        "bundle_10pct_sgd": r["sgd_on_over_off"]["epoch_median"] <= 1 / 1.1
        and r["sgd_on_over_off"]["paired_chunk_median"] <= 1 / 1.1,
        "bundle_10pct_grapes": r["grapes_on_over_off"]["epoch_median"] <= 1 / 1.1
        and r["grapes_on_over_off"]["paired_chunk_median"] <= 1 / 1.1,
        "target_sgd_0.7_on": r["sgd_on_over_plain_torch"]["epoch_median"] <= 0.7,
        "target_grapes_1.10_on": r["grapes_over_sgd_on"]["epoch_median"] <= 1.10,
    }
    s["targets"] = {"on_over_off": 1 / 1.1, "ours_sgd_over_plain_torch": 0.7,
                    "grapes_over_sgd": 1.10}
    s["setup"] = {"dataset": "fashion-mnist", "n_train": int(x.shape[0]), "layers": SIZES,
                  "batch": bs, "lr": lr, "repeats": args.repeats,
                  "chunks_per_epoch": args.chunks, "torch_threads": torch.get_num_threads()}
    path = write_result(args.name, s)
    for k, v in med.items():
        print(f"{k:<12} {v:7.3f} s/epoch")
    for k, v in r.items():
        print(f"{k:<26} epoch {v['epoch_median']:.3f}  paired chunks "
              f"{v['paired_chunk_median']:.3f}  paired epochs {v['paired_epoch_median']:.3f}")
    print("verdict:", s["verdict"])
    print(f"load {load_before} -> {load_after}, {torch.get_num_threads()} torch threads; "
          f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
