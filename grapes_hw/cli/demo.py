"""``grapes-hw demo``: SGD, momentum and GRAPES side by side on the embedded digits data.

Each entry of ``DEMO_RUNS`` is one training run; extension modules (fixed point, analog)
append theirs. The demo prints a table (accuracy, slowness, optimizer memory, write pulses,
time) and writes ``learning_curves.png``, ``demo_results.jsonl`` and ``demo_table.md``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from grapes_hw.training.config import TrainConfig
from grapes_hw.training.train import run


@dataclass
class DemoRun:
    """One line of the demo table."""

    label: str
    config: TrainConfig
    requires: str = ""
    """An optional module the run needs (e.g. ``aihwkit``); skipped with a note if absent."""
    quick_epochs: int = 3
    tags: dict = field(default_factory=dict)


def _base(**kw) -> TrainConfig:
    base = dict(dataset="digits", layers=(256, 256, 256), epochs=20, batch_size=64, seed=0)
    base.update(kw)
    return TrainConfig.from_flat(**base)


DEMO_RUNS: list[DemoRun] = [
    DemoRun("float32 SGD", _base(optimizer="sgd", lr=0.1)),
    DemoRun("float32 momentum", _base(optimizer="momentum", lr=0.01, momentum=0.9)),
    DemoRun("float32 SGD+GRAPES", _base(optimizer="sgd", lr=0.1, grapes="propagating")),
]

# Fixed-point weights (stochastic rounding; device_models/fixed8.toml, fixed4.toml).
DEMO_RUNS += [
    DemoRun(f"{m} SGD{'+GRAPES' if g != 'off' else ''}",
            _base(backend=m, optimizer="sgd", lr=0.1, grapes=g), tags={"backend": m})
    for m in ("fixed8", "fixed4") for g in ("off", "propagating")
]

# In-situ training on PCM (IBM aihwkit; device_models/pcm-insitu.toml at its lr 0.05;
# momentum at lr 0.005 with gamma 0.9 takes the same effective step). 5 epochs (~1 s each):
# accuracy, write pulses and momentum's velocity memory side by side.
DEMO_RUNS += [
    DemoRun(f"pcm-insitu {label}", _base(backend="pcm-insitu", epochs=5, **kw),
            requires="aihwkit", quick_epochs=2, tags={"backend": "pcm-insitu"})
    for label, kw in (("SGD", dict(optimizer="sgd", lr=0.05)),
                      ("momentum", dict(optimizer="momentum", lr=0.005, momentum=0.9)),
                      ("SGD+GRAPES", dict(optimizer="sgd", lr=0.05, grapes="propagating")))
]


def _fmt(v, spec=".4f") -> str:
    return "n/a" if v is None else format(v, spec)


def run_demo(out_dir: str = "demo_out", quick: bool = False) -> int:
    import importlib.util

    from grapes_hw.studies.store import check_out_dir

    out = check_out_dir(out_dir, "--out")
    if (out / "runs.jsonl").exists() or (out / "study.json").exists():
        from grapes_hw.errors import ConfigError

        raise ConfigError("--out", f"{out} holds a sweep's results; the demo's files "
                                   "(learning_curves.png, ...) would replace its report's")
    out.mkdir(parents=True, exist_ok=True)
    results = []
    jsonl = out / "demo_results.jsonl"
    # The runs go to a temporary file that replaces demo_results.jsonl once the demo is
    # complete: an interrupted demo leaves the previous, complete results in place.
    partial = out / "demo_results.jsonl.partial"
    with open(partial, "w") as f:
        for d in DEMO_RUNS:
            if d.requires and importlib.util.find_spec(d.requires) is None:
                print(f"{d.label}: skipped ({d.requires} is not installed)")
                continue
            cfg = d.config
            if quick:

                cfg = cfg.replace(epochs=min(cfg.run.epochs, d.quick_epochs))
            t0 = time.perf_counter()
            r = run(cfg)
            if r.get("status") == "interrupted":  # the run caught Ctrl-C / SIGTERM (and
                raise KeyboardInterrupt  # kept its epochs): the demo stops, as at any other time
            r["label"] = d.label
            r["wall_seconds"] = time.perf_counter() - t0
            results.append(r)
            f.write(json.dumps(r) + "\n")
            f.flush()
            print(f"{d.label:<28} best {_fmt(r['best_test_acc'])}  ({r['wall_seconds']:.1f}s)",
                  flush=True)

    os.replace(partial, jsonl)
    header = ("| run | best test acc | final test acc | slowness (epochs) | optimizer state "
              "(bytes) | write pulses | seconds |\n|---|---|---|---|---|---|---|\n")
    rows = "".join(
        f"| {r['label']} | {_fmt(r['best_test_acc'])} | {_fmt(r['final_test_acc'])} | "
        f"{_fmt(r['slowness'], '.2f')} | {r['optimizer_state_bytes']} | {r['pulses_total']:.3g} | "
        f"{r['wall_seconds']:.1f} |\n"
        for r in results)
    table = header + rows
    (out / "demo_table.md").write_text(
        "# grapes-hw demo: digits, 64-256-256-256-10 ReLU, batch 64\n\n" + table)
    print()
    print(table)
    _plot(results, out / "learning_curves.png")
    print(f"wrote {out / 'demo_table.md'}, {out / 'learning_curves.png'}, {jsonl}")
    return 0


def _plot(results: list[dict], path: Path) -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        ep = [e["epoch"] for e in r["epochs"]]
        acc = [e["test_acc"] for e in r["epochs"]]
        ax.plot(ep, acc, marker=".", label=r["label"])
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole numbers
    ax.set_ylabel("test accuracy")
    ax.set_title("digits, 3x256 ReLU: learning curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
