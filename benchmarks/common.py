"""Helpers shared by the benchmarks: interleaved repeated timing and result files.

The machine is noisy (2 shared cores), so every benchmark times its candidates in the
same process, interleaved (A, B, A, B, ...), and reports the ratio of medians. Results
go to ``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = [784, 256, 256, 256, 10]
"""The MLP of the epoch benchmarks: Fashion-MNIST, 3 x 256 ReLU, no bias."""


def parse_args(doc: str, name: str | None, *, repeats: int = 10, chunks: int | None = 10,
               subset: int | None = None, extra=None) -> argparse.Namespace:
    """The options of an epoch benchmark (``--repeats``, ``--chunks`` unless ``chunks`` is
    None, ``--subset``, ``--threads``, ``--name`` unless ``name`` is None; ``extra(parser)``
    adds the benchmark's own); sets torch's thread count when ``--threads`` is given."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=repeats, help="epochs per candidate")
    if chunks is not None:
        ap.add_argument("--chunks", type=int, default=chunks,
                        help="each epoch is timed in this many interleaved chunks")
    ap.add_argument("--subset", type=int, default=subset,
                    help=f"training samples per epoch (default {subset or 'all'})")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's own, one per core)")
    if name is not None:
        ap.add_argument("--name", default=name, help="result file name")
    if extra is not None:
        extra(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def fashion_mnist(subset: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST training images (float32, flat) and labels, all or a seeded subset."""
    import numpy as np

    from grapes_hw.data.datasets import load_dataset

    data = load_dataset("fashion-mnist", train_subset=subset)
    return (torch.from_numpy(np.ascontiguousarray(data.x_train, dtype=np.float32)),
            torch.from_numpy(data.y_train.astype(np.int64)))


def mlp_learner(model, grapes: str = "off"):
    """Our learner for the ``SIZES`` MLP on device model ``model`` (a name or DeviceModel):
    BP, GRAPES mode ``grapes``, plain SGD."""
    from grapes_hw.backends.registry import resolve_device_model
    from grapes_hw.functional.grapes import GrapesParameters
    from grapes_hw.rules.credit import BP
    from grapes_hw.rules.learner import Learner
    from grapes_hw.rules.optim import SGD
    from grapes_hw.training.config import TrainConfig
    from grapes_hw.training.driver import build_network

    cfg = TrainConfig.from_flat(dataset="fashion-mnist", layers=tuple(SIZES[1:-1]), seed=0)
    net = build_network(cfg, resolve_device_model(model), SIZES[0], SIZES[-1])
    return Learner(net, BP(net), GrapesParameters(mode=grapes), SGD())


def load_average() -> list[float]:
    """The 1/5/15-minute load averages (empty where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        return []


def batches(x, y, bs: int, step, before=None):
    """``run(rep, b0, b1)``: minibatches b0..b1-1 of epoch ``rep`` (a permutation seeded by
    ``rep``, the same for every candidate) through ``step(x, y)``; ``before()`` runs first
    (e.g. to set a switch for this candidate)."""
    perms: dict[int, torch.Tensor] = {}

    def run(rep: int, b0: int, b1: int) -> None:
        if before is not None:
            before()
        p = perms.get(rep)
        if p is None:
            p = perms[rep] = torch.randperm(x.shape[0],
                                            generator=torch.Generator().manual_seed(rep))
        for b in range(b0, b1):
            idx = p[b * bs:(b + 1) * bs]
            step(x[idx], y[idx])
    return run


def plain_torch_step(sizes: list[int], lr: float):
    """One SGD step of the plain PyTorch MLP ``sizes`` (nn.Linear without bias, ReLU,
    autograd, torch.optim.SGD): the reference of the float benchmarks."""
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1], bias=False))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def step(xb, yb):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
    return step


def interleaved(candidates: dict, repeats: int) -> dict[str, list[float]]:
    """Run each callable ``repeats`` times, interleaved; return seconds per call."""
    times: dict[str, list[float]] = {k: [] for k in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def interleaved_chunks(candidates: dict, n_batches: int, repeats: int, chunks: int,
                       reference: str) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Time ``repeats`` epochs of every candidate, each epoch cut into ``chunks`` chunks that
    run interleaved across the candidates (the order rotating from chunk to chunk), so load
    from other processes hits them alike. ``candidates[name](rep, b0, b1)`` trains minibatches
    ``b0 .. b1 - 1`` of epoch ``rep``. Returns the seconds per epoch of each candidate and its
    per-chunk time ratios to ``reference`` (paired in time: the more robust measure on a busy
    machine)."""
    names = list(candidates)
    bounds = [round(i * n_batches / chunks) for i in range(chunks + 1)]
    epoch_s: dict[str, list[float]] = {k: [] for k in names}
    chunk_ratio: dict[str, list[float]] = {k: [] for k in names}
    for rep in range(repeats):
        total = dict.fromkeys(names, 0.0)
        for c in range(chunks):
            order = names[c % len(names):] + names[:c % len(names)]
            t = {}
            for k in order:
                t0 = time.perf_counter()
                candidates[k](rep, bounds[c], bounds[c + 1])
                t[k] = time.perf_counter() - t0
                total[k] += t[k]
            for k in names:
                chunk_ratio[k].append(t[k] / t[reference])
        for k in names:
            epoch_s[k].append(total[k])
    return epoch_s, chunk_ratio


def summarize(times: dict[str, list[float]], reference: str,
              chunk_ratio: dict[str, list[float]] | None = None) -> dict:
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "seconds_median": med,
        "seconds_all": times,
        "ratio_to_" + reference: {k: med[k] / med[reference] for k in med},
    }
    if chunk_ratio is not None:
        out["chunk_ratio_median_to_" + reference] = {
            k: statistics.median(v) for k, v in chunk_ratio.items()}
    return out


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = dict(payload)
    payload["machine"] = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "torch": torch.__version__, "python": platform.python_version()}
    payload["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path
