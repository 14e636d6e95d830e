"""One Fashion-MNIST epoch (a subset) on aihwkit analog tiles: our AnalogTileBackend vs raw
aihwkit (``AnalogSequential`` of ``AnalogLinear(bias=False)`` + ReLU, ``AnalogSGD``), same
784-256-256-256-10 net, same He-uniform initial weights, batch 64, same data order, timed
interleaved in one process. Target (issue: analog): ours <= 1.1x raw aihwkit per epoch.

Both sides use one tile per layer: raw aihwkit's ``mapping.max_input_size`` (512 by default,
which would split the 784-input layer into two tiles) is set to 0, and our backend always
builds one tile per layer. Our side counts pulses (``count_pulses``, the default) and runs
the tile's ``post_update_step`` once per minibatch, as ``AnalogSGD`` does.

Configs: ``fp`` = FloatingPointRPUConfig (the overhead of the wrapper itself is most
visible here, the tile's work being a plain float GEMM), ``pcm`` = PCMPreset with omega 1
(device_models/pcm-unitcell.toml), ``pcm_mp`` = the pcm-insitu recipe
(MixedPrecisionPCMPreset, omega 1, no refresh, g0 = 1). ``ours_*_grapes`` adds GRAPES
(propagating), whose importance reads the tile's weights every minibatch.

The default subset (6,400 samples = 100 minibatches) runs in a few minutes; a full epoch
(60,000 samples) takes about 60000/subset = 9.4x the reported seconds (the per-minibatch
cost does not depend on the epoch length). Writes benchmarks/results/analog_epoch.json.

    python benchmarks/bench_analog.py [--subset 6400] [--repeats 3] [--configs fp,pcm,pcm_mp]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, summarize, write_result  # noqa: E402

from grapes_hw.backends.analog.config import AnalogParams, build_rpu_config
from grapes_hw.backends.analog.tile import AnalogTileBackend, _add_pair_baseline
from grapes_hw.data.datasets import load_dataset
from grapes_hw.functional.grapes import GrapesParameters
from grapes_hw.functional.init import he_uniform
from grapes_hw.models.mlp import HWLinear, Network
from grapes_hw.rules.credit import BP
from grapes_hw.rules.learner import Learner
from grapes_hw.rules.optim import SGD

SIZES = [784, 256, 256, 256, 10]
ONE_TILE = {"mapping.max_input_size": 0, "mapping.max_output_size": 0}
CONFIGS = {
    "fp": AnalogParams(rpu_config="FloatingPointRPUConfig", set=dict(ONE_TILE)),
    "pcm": AnalogParams(rpu_config="PCMPreset",
                        set={"mapping.weight_scaling_omega": 1.0, **ONE_TILE}),
    "pcm_mp": AnalogParams(rpu_config="MixedPrecisionPCMPreset", g0=1.0,
                           set={"mapping.weight_scaling_omega": 1.0,
                                "device.device.refresh_every": 0, **ONE_TILE}),
}


def init_weights(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [he_uniform((SIZES[i + 1], SIZES[i]), gen) for i in range(len(SIZES) - 1)]


def epoch_raw(params: AnalogParams, weights, x, y, perm, bs, lr):
    """Raw aihwkit: AnalogLinear layers trained by autograd + AnalogSGD."""
    from aihwkit.nn import AnalogLinear, AnalogSequential
    from aihwkit.optim import AnalogSGD

    layers = []
    for i, w in enumerate(weights):
        lin = AnalogLinear(SIZES[i], SIZES[i + 1], bias=False, rpu_config=build_rpu_config(params))
        lin.set_weights(w)
        if params.g0:
            for tile in lin.analog_tiles():
                _add_pair_baseline(tile, params.g0)
        layers.append(lin)
        if i < len(weights) - 1:
            layers.append(torch.nn.ReLU())
    model = AnalogSequential(*layers)
    model.train()
    opt = AnalogSGD(model.parameters(), lr=lr)
    opt.regroup_param_groups(model)

    def run():
        for b in range(0, x.shape[0], bs):
            idx = perm[b:b + bs]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    return run


def epoch_ours(params: AnalogParams, weights, x, y, perm, bs, lr, grapes="off"):
    layers = []
    for i, w in enumerate(weights):
        b = AnalogTileBackend(tuple(w.shape), params, seed=i)
        b.program(w)
        layers.append(HWLinear(b))
    net = Network(layers, "relu")
    learner = Learner(net, BP(net), GrapesParameters(mode=grapes), SGD())

    def run():
        for b in range(0, x.shape[0], bs):
            idx = perm[b:b + bs]
            learner.step(x[idx], y[idx], lr)
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--subset", type=int, default=6400, help="samples per epoch (default 6400)")
    ap.add_argument("--configs", default="fp,pcm,pcm_mp",
                    help=f"comma-separated, from {', '.join(CONFIGS)}")
    ap.add_argument("--no-grapes", action="store_true", help="skip the GRAPES candidates")
    ap.add_argument("--name", default="analog_epoch", help="result file name")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("fashion-mnist", train_subset=args.subset)
    x = torch.from_numpy(np.ascontiguousarray(data.x_train, dtype=np.float32))
    y = torch.from_numpy(data.y_train.astype(np.int64))
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    bs, lr = 64, 0.05
    weights = init_weights(0)
    configs = [c for c in args.configs.split(",") if c]
    out: dict = {"setup": {"dataset": "fashion-mnist", "n_train": int(x.shape[0]),
                           "layers": SIZES, "batch": bs, "lr": lr, "repeats": args.repeats,
                           "full_epoch_factor": 60000 / x.shape[0],
                           "torch_threads": torch.get_num_threads()},
                 "targets": {"ours_over_raw": 1.1}, "configs": {}}
    for name in configs:
        params = CONFIGS[name]
        cands = {"raw_aihwkit": epoch_raw(params, weights, x, y, perm, bs, lr),
                 "ours_sgd": epoch_ours(params, weights, x, y, perm, bs, lr)}
        if not args.no_grapes:
            cands["ours_grapes"] = epoch_ours(params, weights, x, y, perm, bs, lr, "propagating")
        # One untimed round first: numba kernels compile and caches warm on first use.
        times = {k: v[1:] for k, v in interleaved(cands, args.repeats + 1).items()}
        s = summarize(times, "raw_aihwkit")
        med = s["seconds_median"]
        s["ours_over_raw"] = med["ours_sgd"] / med["raw_aihwkit"]
        if "ours_grapes" in med:
            s["grapes_over_ours_sgd"] = med["ours_grapes"] / med["ours_sgd"]
        s["full_epoch_seconds_estimate"] = {k: v * 60000 / x.shape[0] for k, v in med.items()}
        s["rpu_config"] = params.rpu_config
        s["set"] = dict(params.set)
        s["g0"] = params.g0
        out["configs"][name] = s
        for k, v in med.items():
            print(f"{name:<7} {k:<12} {v:7.3f} s/epoch ({x.shape[0]} samples; "
                  f"~{v * 60000 / x.shape[0]:.1f} s for 60000)", flush=True)
        print(f"{name:<7} ours / raw aihwkit = {s['ours_over_raw']:.3f} (target <= 1.1)"
              + (f"; GRAPES / SGD = {s['grapes_over_ours_sgd']:.3f}" if "ours_grapes" in med
                 else ""), flush=True)
    path = write_result(args.name, out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
