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

import os
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
    summarize,
    write_result,
)

from grapes_hw.backends.fixed_point import FixedParams  # noqa: E402
from grapes_hw.backends.registry import DeviceModel, load_device_model  # noqa: E402


def fixed_model(bits: int, rounding: str) -> DeviceModel:
    return DeviceModel(name=f"fixed{bits}-{rounding}", description="benchmark", backend="fixed",
                       params=FixedParams(bits=bits, rounding=rounding))  # type: ignore[arg-type]


def epoch_ours(model: DeviceModel, x, y, bs, lr):
    learner = mlp_learner(model)
    learner.step(x[:bs], y[:bs], lr)  # compile / load the kernels before timing
    return batches(x, y, bs, lambda xb, yb: learner.step(xb, yb, lr))


def main() -> int:
    args = parse_args(__doc__, "fixed_point", chunks=20)
    x, y = fashion_mnist(args.subset)
    bs, lr = 64, 0.05
    models = {
        "float32": load_device_model("float32"),
        "fixed8_stochastic": fixed_model(8, "stochastic"),
        "fixed8_nearest": fixed_model(8, "nearest"),
        "fixed16_stochastic": fixed_model(16, "stochastic"),
    }
    cands = {k: epoch_ours(m, x, y, bs, lr) for k, m in models.items()}
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
