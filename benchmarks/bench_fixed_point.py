"""One Fashion-MNIST epoch, 784-256-256-256-10 ReLU, batch 64, plain SGD: the fixed-point
backend (8 bits, stochastic rounding) vs the float32 backend, timed interleaved in one run.

Target (issue: fixed point): fixed8 epoch <= 1.3x the float32 epoch. Also timed (reported,
no target): 8 bits with nearest rounding and 16 bits stochastic. The numba kernels are
compiled (or loaded from cache) before timing starts. Each candidate trains ``--repeats``
full epochs; every epoch is cut into ``--chunks`` chunks run interleaved across the
candidates (rotating order), so load from other processes on a shared machine hits all of
them alike. Reported: the ratio of median epoch times and the median of the per-chunk ratios
to float32 (paired in time, the more robust of the two on a busy machine).
Writes benchmarks/results/fixed_point.json.

    python benchmarks/bench_fixed_point.py [--repeats 3] [--subset N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import summarize, write_result  # noqa: E402

from grapes_hw.backends.fixed_point import FixedParams  # noqa: E402
from grapes_hw.credit import BP  # noqa: E402
from grapes_hw.data import load_dataset  # noqa: E402
from grapes_hw.devices import DeviceModel, load_device_model  # noqa: E402
from grapes_hw.grapes import GrapesParameters  # noqa: E402
from grapes_hw.learning import Learner  # noqa: E402
from grapes_hw.optim import SGD  # noqa: E402
from grapes_hw.train import TrainConfig, build_network  # noqa: E402

SIZES = [784, 256, 256, 256, 10]


def fixed_model(bits: int, rounding: str) -> DeviceModel:
    return DeviceModel(name=f"fixed{bits}-{rounding}", description="benchmark", backend="fixed",
                       params=FixedParams(bits=bits, rounding=rounding))  # type: ignore[arg-type]


def learner_for(model: DeviceModel, x, y, bs, lr) -> Learner:
    cfg = TrainConfig(dataset="fashion-mnist", layers=tuple(SIZES[1:-1]), seed=0)
    net = build_network(cfg, model, SIZES[0], SIZES[-1])
    learner = Learner(net, BP(net), GrapesParameters(mode="off"), SGD())
    learner.step(x[:bs], y[:bs], lr)  # compile / load the kernels before timing
    return learner


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="epochs per candidate")
    ap.add_argument("--chunks", type=int, default=20,
                    help="each epoch is timed in this many interleaved chunks")
    ap.add_argument("--subset", type=int, default=None, help="samples per epoch (default all)")
    args = ap.parse_args()
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
    learners = {k: learner_for(m, x, y, bs, lr) for k, m in models.items()}
    names = list(learners)
    n_batches = -(-x.shape[0] // bs)
    bounds = np.linspace(0, n_batches, args.chunks + 1).round().astype(int)
    epoch_s: dict[str, list[float]] = {k: [] for k in names}
    chunk_ratio: dict[str, list[float]] = {k: [] for k in names}
    for rep in range(args.repeats):
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(rep))
        tot = {k: 0.0 for k in names}
        for c in range(args.chunks):
            # Interleave the candidates chunk by chunk, rotating the order, so that load
            # from other processes hits them alike; pair each chunk with float32's.
            order = names[c % len(names):] + names[:c % len(names)]
            t = {}
            for k in order:
                lrn = learners[k]
                t0 = time.perf_counter()
                for b in range(bounds[c], bounds[c + 1]):
                    idx = perm[b * bs:(b + 1) * bs]
                    lrn.step(x[idx], y[idx], lr)
                t[k] = time.perf_counter() - t0
                tot[k] += t[k]
            for k in names:
                chunk_ratio[k].append(t[k] / t["float32"])
        for k in names:
            epoch_s[k].append(tot[k])
    s = summarize(epoch_s, "float32")
    s["chunk_ratio_median"] = {k: statistics.median(v) for k, v in chunk_ratio.items()}
    s["fixed8_stochastic_over_float32"] = s["ratio_to_float32"]["fixed8_stochastic"]
    s["fixed8_stochastic_over_float32_chunk_median"] = s["chunk_ratio_median"]["fixed8_stochastic"]
    s["targets"] = {"fixed8_stochastic_over_float32": 1.3}
    s["setup"] = {"dataset": "fashion-mnist", "n_train": int(x.shape[0]), "layers": SIZES,
                  "batch": bs, "lr": lr, "optimizer": "sgd", "repeats": args.repeats,
                  "chunks_per_epoch": args.chunks, "numba_threads": numba_threads()}
    path = write_result("fixed_point", s)
    med = s["seconds_median"]
    for k in names:
        print(f"{k:<20} {med[k]:7.3f} s/epoch  ({med[k] / med['float32']:.3f}x float32; "
              f"median paired chunk ratio {s['chunk_ratio_median'][k]:.3f})")
    print(f"fixed8 stochastic / float32 = {s['fixed8_stochastic_over_float32']:.3f} epoch, "
          f"{s['fixed8_stochastic_over_float32_chunk_median']:.3f} paired chunks (target <= 1.3)")
    print(f"wrote {path}")
    return 0


def numba_threads() -> int | None:
    try:
        import numba

        return int(numba.get_num_threads())
    except Exception:  # pragma: no cover
        return None


if __name__ == "__main__":
    sys.exit(main())
