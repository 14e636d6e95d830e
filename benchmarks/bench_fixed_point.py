"""One Fashion-MNIST epoch, 784-256-256-256-10 ReLU, batch 64, plain SGD: the fixed-point
backend (8 bits, stochastic rounding) vs the float32 backend, timed interleaved in one run.

Target (issue: fixed point): fixed8 epoch <= 1.3x the float32 epoch. Also timed (reported,
no target): 8 bits with nearest rounding and 16 bits stochastic. The numba kernels are
compiled (or loaded from cache) before timing starts. Each candidate trains ``--repeats``
full epochs; every epoch is cut into ``--chunks`` chunks run interleaved across the
candidates (rotating order, ``common.interleaved_chunks``), so load from other processes on
a shared machine hits all of them alike. Reported: the ratio of median epoch times and the
median of the per-chunk ratios to float32 (paired in time, the more robust of the two on a
busy machine). Writes benchmarks/results/fixed_point.json (or ``--name``).

    python benchmarks/bench_fixed_point.py [--repeats 10] [--subset N] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_chunks, summarize, write_result  # noqa: E402

from grapes_hw.backends.fixed_point import FixedParams
from grapes_hw.backends.registry import DeviceModel, load_device_model
from grapes_hw.data.datasets import load_dataset
from grapes_hw.functional.grapes import GrapesParameters
from grapes_hw.rules.credit import BP
from grapes_hw.rules.learner import Learner
from grapes_hw.rules.optim import SGD
from grapes_hw.training.config import TrainConfig
from grapes_hw.training.driver import build_network

SIZES = [784, 256, 256, 256, 10]


def fixed_model(bits: int, rounding: str) -> DeviceModel:
    return DeviceModel(name=f"fixed{bits}-{rounding}", description="benchmark", backend="fixed",
                       params=FixedParams(bits=bits, rounding=rounding))  # type: ignore[arg-type]


def learner_for(model: DeviceModel, x, y, bs, lr) -> Learner:
    cfg = TrainConfig.from_flat(dataset="fashion-mnist", layers=tuple(SIZES[1:-1]), seed=0)
    net = build_network(cfg, model, SIZES[0], SIZES[-1])
    learner = Learner(net, BP(net), GrapesParameters(mode="off"), SGD())
    learner.step(x[:bs], y[:bs], lr)  # compile / load the kernels before timing
    return learner


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10, help="epochs per candidate")
    ap.add_argument("--chunks", type=int, default=20,
                    help="each epoch is timed in this many interleaved chunks")
    ap.add_argument("--subset", type=int, default=None, help="samples per epoch (default all)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's own, one per core)")
    ap.add_argument("--name", default="fixed_point", help="result file name")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset("fashion-mnist", train_subset=args.subset)
    x = torch.from_numpy(np.ascontiguousarray(data.x_train, dtype=np.float32))
    y = torch.from_numpy(data.y_train.astype(np.int64))
    bs, lr = 64, 0.05
    models = {
        "float32": load_device_model("float32"),
        "fixed8_stochastic": fixed_model(8, "stochastic"),
        "fixed8_nearest": fixed_model(8, "nearest"),
        "fixed16_stochastic": fixed_model(16, "stochastic"),
    }
    perms: dict[int, torch.Tensor] = {}

    def candidate(lrn: Learner):
        def run(rep: int, b0: int, b1: int) -> None:
            p = perms.get(rep)
            if p is None:
                p = perms[rep] = torch.randperm(x.shape[0],
                                                generator=torch.Generator().manual_seed(rep))
            for b in range(b0, b1):
                idx = p[b * bs:(b + 1) * bs]
                lrn.step(x[idx], y[idx], lr)
        return run

    cands = {k: candidate(learner_for(m, x, y, bs, lr)) for k, m in models.items()}
    load_before = os.getloadavg()
    epoch_s, chunk_ratio = interleaved_chunks(cands, -(-x.shape[0] // bs), args.repeats,
                                              args.chunks, "float32")
    s = summarize(epoch_s, "float32", chunk_ratio)
    s["load_before"], s["load_after"] = load_before, os.getloadavg()
    cr = s["chunk_ratio_median"] = s.pop("chunk_ratio_median_to_float32")
    s["fixed8_stochastic_over_float32"] = s["ratio_to_float32"]["fixed8_stochastic"]
    s["fixed8_stochastic_over_float32_chunk_median"] = cr["fixed8_stochastic"]
    s["targets"] = {"fixed8_stochastic_over_float32": 1.3}
    s["setup"] = {"dataset": "fashion-mnist", "n_train": int(x.shape[0]), "layers": SIZES,
                  "batch": bs, "lr": lr, "optimizer": "sgd", "repeats": args.repeats,
                  "chunks_per_epoch": args.chunks, "torch_threads": torch.get_num_threads()}
    path = write_result(args.name, s)
    med = s["seconds_median"]
    for k in models:
        print(f"{k:<20} {med[k]:7.3f} s/epoch  ({med[k] / med['float32']:.3f}x float32; "
              f"median paired chunk ratio {cr[k]:.3f})")
    print(f"fixed8 stochastic / float32 = {s['fixed8_stochastic_over_float32']:.3f} epoch, "
          f"{s['fixed8_stochastic_over_float32_chunk_median']:.3f} paired chunks (target <= 1.3)")
    print(f"load {load_before[0]:.2f} -> {s['load_after'][0]:.2f}, "
          f"{torch.get_num_threads()} torch threads; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
