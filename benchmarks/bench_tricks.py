"""Each speed trick against the simple code it replaces: whole Fashion-MNIST epochs (a
subset), 784-256-256-256-10 ReLU, batch 64, every candidate of a group timed interleaved in
one process: each epoch is cut into ``--chunks`` chunks run A, B, C, then B, C, A, ...
(``common.interleaved_chunks``); reported are the median epoch time over ``--repeats``
epochs and the median of the per-chunk ratios to the group's reference. The simple side of
each pair is the code the package falls back to (the torch references kept for the tests),
switched in by patching the one call site while that candidate's chunk runs.

Groups (``--groups``):

* ``sgd``: float SGD epoch. ``all`` (the package as it is) against ``torch_softmax``
  (``learning._softmax_error_torch`` instead of the numba ``softmax_xent``) and
  ``torch_actgrad`` (``g.mul_(h > 0)`` instead of the numba ``act_grad_scale``).
* ``grapes``: float GRAPES (propagating) epoch. ``pool`` (factors on torch's OpenMP threads
  after each forward MVM, ``_omp``), ``generic`` (``backend.abs_sums`` + ``modulation_factor``
  after the forward pass, numba row sums and modulation), ``generic_torch_rows`` (row sums by
  ``torch.linalg.vector_norm``; ``generic_abs_sum``: ``w.abs().sum(1)``),
  ``generic_torch_mod`` (``grapes._modulation_torch``), ``generic_torch_both``;
  ``sgd`` for the GRAPES / SGD ratio.
* ``local``: local GRAPES epoch. ``generic`` against ``torch_scale`` (``d.mul_(m)``
  instead of the numba ``scale_columns``), ``pool`` for reference.
* ``fixed``: fixed8 stochastic SGD epoch. ``pool_gemm`` (the write and the update's product
  ``delta^T x`` by MKL's sgemm_ on torch's threads), ``pool`` (torch.mm, then the write on
  torch's threads), ``numba_parallel`` (torch.mm, numba ``parallel=True`` write),
  ``serial`` (torch.mm, the write on one thread); ``float32`` for the fixed8 / float ratio.
* ``analog``: pcm-insitu (MixedPrecisionPCMPreset, as ``bench_analog``'s ``pcm_mp``) SGD
  epoch with pulse counting: ``numba_diff`` (``abs_diff_sum``) against ``torch_diff``
  (``float((after - before).abs().sum())``). Needs aihwkit; torch runs on 1 thread there.

Every group records the load average before and after it and its torch thread count. Writes
benchmarks/results/tricks.json (or ``--name``).

    python benchmarks/bench_tricks.py [--repeats 10] [--subset 12000] [--groups sgd,grapes]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_chunks, summarize, write_result  # noqa: E402

from grapes_hw import grapes as grapes_mod  # noqa: E402
from grapes_hw import learning, network  # noqa: E402
from grapes_hw.backends.float_backend import FloatBackend  # noqa: E402
from grapes_hw.credit import BP  # noqa: E402
from grapes_hw.data import load_dataset  # noqa: E402
from grapes_hw.devices import load_device_model  # noqa: E402
from grapes_hw.grapes import GrapesParameters  # noqa: E402
from grapes_hw.learning import Learner  # noqa: E402
from grapes_hw.optim import SGD  # noqa: E402
from grapes_hw.train import TrainConfig, build_network  # noqa: E402

SIZES = [784, 256, 256, 256, 10]
BS, LR = 64, 0.05


def _never(*_a, **_k) -> bool:
    return False


def _torch_row_sums(self, dim: int, ideal: bool = False) -> torch.Tensor:
    return torch.linalg.vector_norm(self.w, ord=1, dim=dim)


def _abs_sum_rows(self, dim: int, ideal: bool = False) -> torch.Tensor:
    return self.w.abs().sum(dim)


def _torch_count(self, before) -> None:
    if before is None:
        return
    after = self._raw()
    self._pulses += float((after - before).abs().sum()) / self.dw_min
    self._snap = after


# The simple code of each trick: (object, attribute, replacement) while the candidate runs.
SIMPLE = {
    "softmax": [(learning, "softmax_error", learning._softmax_error_torch)],
    "actgrad": [(network, "_fusable", _never)],
    "scale": [(learning, "_fusable", _never)],
    "rows": [(FloatBackend, "abs_sums", _torch_row_sums)],
    "abs_sum": [(FloatBackend, "abs_sums", _abs_sum_rows)],
    "mod": [(learning, "modulation_factor", grapes_mod._modulation_torch)],
}


@contextlib.contextmanager
def patched(patches):
    old = [(o, a, getattr(o, a)) for o, a, _ in patches]
    for o, a, v in patches:
        setattr(o, a, v)
    try:
        yield
    finally:
        for o, a, v in old:
            setattr(o, a, v)


def epoch(learner: Learner, x, y, patches=()):
    """``run(rep, b0, b1)``: minibatches b0..b1-1 of epoch ``rep`` (its own permutation)."""
    perms: dict[int, torch.Tensor] = {}

    def run(rep: int, b0: int, b1: int) -> None:
        p = perms.get(rep)
        if p is None:
            p = perms[rep] = torch.randperm(x.shape[0],
                                            generator=torch.Generator().manual_seed(rep))
        with patched(patches):
            for b in range(b0, b1):
                idx = p[b * BS:(b + 1) * BS]
                learner.step(x[idx], y[idx], LR)
    return run


def float_learner(mode: str, model="float32", pool=True) -> Learner:
    cfg = TrainConfig(dataset="fashion-mnist", layers=tuple(SIZES[1:-1]), seed=0)
    net = build_network(cfg, load_device_model(model), SIZES[0], SIZES[-1])
    learner = Learner(net, BP(net), GrapesParameters(mode=mode), SGD())
    if not pool and hasattr(learner, "_rowmod"):
        learner._rowmod = False  # the generic path: abs_sums + modulation_factor
    return learner


def group_sgd(x, y):
    return {
        "all": epoch(float_learner("off"), x, y),
        "torch_softmax": epoch(float_learner("off"), x, y, SIMPLE["softmax"]),
        "torch_actgrad": epoch(float_learner("off"), x, y, SIMPLE["actgrad"]),
    }, "all"


def group_grapes(x, y):
    c = {
        "generic": epoch(float_learner("propagating", pool=False), x, y),
        "generic_torch_rows": epoch(float_learner("propagating", pool=False), x, y,
                                    SIMPLE["rows"]),
        "generic_abs_sum": epoch(float_learner("propagating", pool=False), x, y,
                                 SIMPLE["abs_sum"]),
        "generic_torch_mod": epoch(float_learner("propagating", pool=False), x, y,
                                   SIMPLE["mod"]),
        "generic_torch_both": epoch(float_learner("propagating", pool=False), x, y,
                                    SIMPLE["rows"] + SIMPLE["mod"]),
        "sgd": epoch(float_learner("off"), x, y),
    }
    if hasattr(Learner, "_arm_fused"):
        c["pool"] = epoch(float_learner("propagating"), x, y)
    return c, "generic"


def group_local(x, y):
    c = {
        "generic": epoch(float_learner("local", pool=False), x, y),
        "torch_scale": epoch(float_learner("local", pool=False), x, y, SIMPLE["scale"]),
    }
    if hasattr(Learner, "_arm_fused"):
        c["pool"] = epoch(float_learner("local"), x, y)
    return c, "generic"


def _fixed_learner(variant: str) -> Learner:
    from grapes_hw.backends.fixed_point import FixedParams
    from grapes_hw.devices import DeviceModel

    model = DeviceModel(name="fixed8", description="benchmark", backend="fixed",
                        params=FixedParams(bits=8, rounding="stochastic"))
    learner = float_learner("off", model)
    for layer in learner.net.layers:
        b = layer.backend
        if variant == "serial":
            b._parallel = False
        elif variant == "numba_parallel":
            b._pool = False
        elif variant == "pool":  # torch.mm, then the write on torch's threads
            pool = b._torch_pool()
            if pool:
                b._pool = pool[:3] + (False,)
    return learner


def group_fixed(x, y):
    from grapes_hw.backends import fixed_point

    variants = ["serial"]
    if hasattr(fixed_point.FixedPointBackend, "_torch_pool"):
        variants = ["pool_gemm", "pool", "numba_parallel", "serial"]
    elif hasattr(fixed_point, "_PARALLEL_MIN_CELLS"):
        variants = ["numba_parallel", "serial"]
    c = {v: epoch(_fixed_learner(v), x, y) for v in variants}
    c["float32"] = epoch(float_learner("off"), x, y)
    return c, "serial"


def group_analog(x, y):
    from grapes_hw.backends.analog import AnalogParams, AnalogTileBackend
    from grapes_hw.network import HWLinear, Network, he_uniform

    params = AnalogParams(rpu_config="MixedPrecisionPCMPreset", g0=1.0,
                          set={"mapping.weight_scaling_omega": 1.0,
                               "device.device.refresh_every": 0})

    def learner():
        gen = torch.Generator().manual_seed(0)
        layers = []
        for i in range(len(SIZES) - 1):
            b = AnalogTileBackend((SIZES[i + 1], SIZES[i]), params, seed=i)
            b.program(he_uniform(b.shape, gen))
            layers.append(HWLinear(b))
        net = Network(layers, "relu")
        assert all(layer.backend.pulsed for layer in layers)
        return Learner(net, BP(net), GrapesParameters(mode="off"), SGD())

    simple = [(AnalogTileBackend, "_count", _torch_count)]
    return {"numba_diff": epoch(learner(), x, y),
            "torch_diff": epoch(learner(), x, y, simple)}, "torch_diff"


GROUPS = {"sgd": group_sgd, "grapes": group_grapes, "local": group_local,
          "fixed": group_fixed, "analog": group_analog}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--subset", type=int, default=12000, help="samples per epoch")
    ap.add_argument("--chunks", type=int, default=10, help="interleaved chunks per epoch")
    ap.add_argument("--analog-subset", type=int, default=1280,
                    help="samples per epoch of the analog group (aihwkit steps are slow)")
    ap.add_argument("--groups", default="sgd,grapes,local,fixed",
                    help=f"comma-separated, from {', '.join(GROUPS)}")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch and numba threads, as a sweep worker sets them (default: "
                    "their own, one per core)")
    ap.add_argument("--name", default="tricks", help="result file name")
    args = ap.parse_args()
    if args.threads:
        import numba

        torch.set_num_threads(args.threads)
        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    data = load_dataset("fashion-mnist", train_subset=args.subset)
    x_all = torch.from_numpy(np.ascontiguousarray(data.x_train, dtype=np.float32))
    y_all = torch.from_numpy(data.y_train.astype(np.int64))
    out: dict = {"setup": {"dataset": "fashion-mnist", "n_train": int(x_all.shape[0]),
                           "analog_n_train": args.analog_subset, "layers": SIZES,
                           "batch": BS, "lr": LR, "repeats": args.repeats,
                           "chunks_per_epoch": args.chunks}, "groups": {}}
    threads = torch.get_num_threads()
    for name in [g for g in args.groups.split(",") if g]:
        n = args.analog_subset if name == "analog" else x_all.shape[0]
        x, y = x_all[:n], y_all[:n]
        torch.set_num_threads(1 if name == "analog" else threads)
        cands, ref = GROUPS[name](x, y)
        for run in cands.values():  # untimed: kernels compile (or load from cache)
            run(-1, 0, 2)
        load_before = os.getloadavg()
        n_batches = -(-n // BS)
        times, ratios = interleaved_chunks(cands, n_batches, args.repeats, args.chunks, ref)
        s = summarize(times, ref, ratios)
        s["load_before"], s["load_after"] = load_before, os.getloadavg()
        s["torch_threads"] = torch.get_num_threads()
        out["groups"][name] = s
        cr = s["chunk_ratio_median_to_" + ref]
        for k, v in s["seconds_median"].items():
            print(f"{name:<7} {k:<20} {v:7.3f} s/epoch  {s['ratio_to_' + ref][k]:.3f}x {ref} "
                  f"(chunks {cr[k]:.3f}x)", flush=True)
        print(f"{name:<7} load {load_before[0]:.2f} -> {s['load_after'][0]:.2f}", flush=True)
        path = write_result(args.name, out)  # after every group: a slow group keeps the rest
    torch.set_num_threads(threads)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
