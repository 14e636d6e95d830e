"""Helpers shared by the benchmarks: interleaved repeated timing and result files.

The machine is noisy (2 shared cores), so every benchmark times its candidates in the
same process, interleaved (A, B, A, B, ...), and reports the ratio of medians. Results
go to ``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def interleaved(candidates: dict, repeats: int) -> dict[str, list[float]]:
    """Run each callable ``repeats`` times, interleaved; return seconds per call."""
    times: dict[str, list[float]] = {k: [] for k in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def summarize(times: dict[str, list[float]], reference: str) -> dict:
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "seconds_median": med,
        "seconds_all": times,
        "ratio_to_" + reference: {k: med[k] / med[reference] for k in med},
    }


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = dict(payload)
    payload["machine"] = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "torch": torch.__version__, "python": platform.python_version()}
    payload["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path
