"""The package before the speed tricks were removed against the package now, in one process:
float SGD, GRAPES (propagating) and fixed8 SGD epochs on Fashion-MNIST (a subset),
784-256-256-256-10 ReLU, batch 64, with plain PyTorch for the float target.

The package as of ``--before`` (default ``cbe252a``, the last commit with the numba kernels,
the torch-pool GRAPES factors and the torch-pool fixed-point write) is extracted with
``git archive`` into a temporary folder and imported as ``grapes_hw_before`` (its modules
import each other relatively; networks are built from its classes directly, not through the
device-model registry, which names ``grapes_hw``). Every epoch is cut into ``--chunks``
chunks run interleaved across the candidates (``common.interleaved_chunks``). Writes
benchmarks/results/before_after.json (or ``--name``).

    python benchmarks/bench_before_after.py [--repeats 10] [--subset 12000] [--threads N]
"""

from __future__ import annotations

import importlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import (  # noqa: E402
    SIZES,
    batches,
    fashion_mnist,
    interleaved_chunks,
    parse_args,
    plain_torch_step,
    summarize,
    write_result,
)

import grapes_hw  # noqa: E402

BS, LR = 64, 0.05


def import_before(commit: str, folder: Path):
    """``grapes_hw`` as of ``commit``, importable as ``grapes_hw_before``."""
    tar = subprocess.run(["git", "-C", str(HERE.parent), "archive", commit, "grapes_hw"],
                         check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=tar, check=True)
    shutil.move(folder / "grapes_hw", folder / "grapes_hw_before")
    sys.path.insert(0, str(folder))
    return importlib.import_module("grapes_hw_before")


NOW = {"network": "models.mlp", "init": "functional.init", "credit": "rules.credit",
       "grapes": "functional.grapes", "learning": "rules.learner", "optim": "rules.optim"}
"""Where the package now keeps what the package before had in flat modules (``init``: the
``network`` module before)."""
BEFORE_INIT = "network"


def learner(pkg, mode: str, fixed: bool):
    """A He-uniform 784-256-256-256-10 network (seed 0) on ``pkg``'s float32 or fixed8
    (stochastic) backend, with BP, GRAPES ``mode`` and SGD."""
    layout = NOW if pkg.__name__ == "grapes_hw" else {"init": BEFORE_INIT}
    mods = {m: importlib.import_module(f"{pkg.__name__}.{layout.get(m, m)}")
            for m in ("network", "init", "credit", "grapes", "learning", "optim",
                      "backends.float_backend", "backends.fixed_point")}
    net_m, fp = mods["network"], mods["backends.fixed_point"]
    gen = torch.Generator().manual_seed(0)
    layers = []
    for i in range(len(SIZES) - 1):
        shape = (SIZES[i + 1], SIZES[i])
        if fixed:
            b = fp.FixedPointBackend(shape, fp.FixedParams(bits=8, rounding="stochastic"),
                                     seed=i)
        else:
            b = mods["backends.float_backend"].FloatBackend(shape)
        b.program(mods["init"].he_uniform(shape, gen))
        layers.append(net_m.HWLinear(b))
    net = net_m.Network(layers, "relu")
    return mods["learning"].Learner(net, mods["credit"].BP(net),
                                    mods["grapes"].GrapesParameters(mode=mode),
                                    mods["optim"].SGD())


def learner_step(lrn):
    return lambda xb, yb: lrn.step(xb, yb, LR)


def main() -> int:
    args = parse_args(__doc__, "before_after", subset=12000, extra=lambda ap: (
        ap.add_argument("--before", default="cbe252a", help="commit of the package before")))
    x, y = fashion_mnist(args.subset)
    with tempfile.TemporaryDirectory() as tmp:
        before = import_before(args.before, Path(tmp))
        steps = {"plain_torch": plain_torch_step(SIZES, LR)}
        for tag, pkg in (("before", before), ("now", grapes_hw)):
            for name, mode, fixed in (("sgd", "off", False), ("grapes", "propagating", False),
                                      ("fixed8", "off", True)):
                steps[f"{tag}_{name}"] = learner_step(learner(pkg, mode, fixed))
        cands = {k: batches(x, y, BS, v) for k, v in steps.items()}
        for run in cands.values():  # untimed: kernels compile (or load from cache)
            run(-1, 0, 2)
        load_before = os.getloadavg()
        times, ratios = interleaved_chunks(cands, -(-x.shape[0] // BS), args.repeats,
                                           args.chunks, "now_sgd")
    s = summarize(times, "now_sgd", ratios)
    s["load_before"], s["load_after"] = load_before, os.getloadavg()
    med = s["seconds_median"]

    def paired(a: str, b: str) -> float:  # median over the repeats of the per-epoch ratio
        return statistics.median([p / q for p, q in zip(times[a], times[b], strict=True)])

    s["ratios"] = {
        f"{t}_{k}": {"epoch_median": med[a] / med[b], "paired_epoch_median": paired(a, b)}
        for t in ("before", "now")
        for k, a, b in (("sgd_over_plain_torch", f"{t}_sgd", "plain_torch"),
                        ("grapes_over_sgd", f"{t}_grapes", f"{t}_sgd"),
                        ("fixed8_over_float32", f"{t}_fixed8", f"{t}_sgd"))}
    for k in ("sgd", "grapes", "fixed8"):
        s["ratios"][f"now_over_before_{k}"] = {
            "epoch_median": med[f"now_{k}"] / med[f"before_{k}"],
            "paired_epoch_median": paired(f"now_{k}", f"before_{k}")}
    s["targets"] = {"sgd_over_plain_torch": 0.7, "grapes_over_sgd": 1.10,
                    "fixed8_over_float32": 1.3}
    s["setup"] = {"dataset": "fashion-mnist", "n_train": int(x.shape[0]), "layers": SIZES,
                  "batch": BS, "lr": LR, "repeats": args.repeats,
                  "chunks_per_epoch": args.chunks, "before": args.before,
                  "torch_threads": torch.get_num_threads()}
    path = write_result(args.name, s)
    for k, v in med.items():
        print(f"{k:<16} {v:7.3f} s/epoch")
    for k, v in s["ratios"].items():
        print(f"{k:<32} {v['epoch_median']:.3f} epoch medians, "
              f"{v['paired_epoch_median']:.3f} paired epochs")
    print(f"load {load_before[0]:.2f} -> {s['load_after'][0]:.2f}, "
          f"{torch.get_num_threads()} torch threads; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
