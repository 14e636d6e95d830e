"""Continual learning on pixel-permuted tasks: forgetting with SGD vs GRAPES.

``grapes-hw continual`` trains one network on a sequence of tasks, one after the other:

* task 0 is the original data (K = 0);
* task j >= 1 applies a fixed random permutation of K pixels to every train and test image:
  K pixel positions are drawn and shuffled among themselves with no fixed point (a
  derangement), so exactly K positions change and the other pixels stay where they are. The
  permutation depends only on (seed, task, K), never on the learning rule or backend, so all
  rules see the same tasks.

K is given in the units of 784-pixel images, as in the paper (K = 600: tasks far apart; K =
300: closer tasks). For other image sizes it is scaled to ``round(K * n_pixels / 784)``
(digits, 64 pixels: 600 -> 49, 300 -> 24); ``--k-pixels`` gives the count directly.

Protocol: each task is trained for ``epochs_per_task`` epochs (one continuous run, the
weights and optimizer state carried over, no replay, no task labels). Before training
(epoch 0) and after **every** epoch the test accuracy of **every** task is measured: tasks
seen so far give the forgetting curves, tasks not yet seen the per-task future accuracy.

Outputs in ``--out DIR``:

* ``continual.jsonl``: one line per (backend, rule, seed, epoch) with ``acc`` (one test
  accuracy per task), the task being trained and which tasks were seen;
* ``summary.json``: the settings, the permutations' sizes and per run the accuracy matrix
  ``R[i][j]`` (accuracy on task j after the last epoch of task i), ``average_accuracy``
  (mean of the last row), ``forgetting`` per task (best earlier accuracy minus final, for
  all but the last task), ``backward_transfer`` (mean of R[T-1][j] - R[j][j]),
  ``future_accuracy`` (R[i-1][j] for j >= i: accuracy on tasks not yet trained);
  plus per backend and rule the mean over seeds;
* ``continual_<backend>.png``: the accuracy of every task over training epochs, one panel
  per task, one line per rule (mean over seeds, band = std), task boundaries marked; and
  ``continual_average.png``: mean accuracy over the tasks seen so far.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from grapes_hw.config import RULES, require, to_dict
from grapes_hw.errors import ConfigError

# The command line (``grapes-hw continual``) lives in continual_cli, which imports nothing
# heavy, so that `grapes-hw continual -h` does not import torch.

REFERENCE_PIXELS = 784
"""K is given for 784-pixel (28 x 28) images and scaled for other sizes."""

# ---- tasks -----------------------------------------------------------------------------------
def scaled_k(k: int, n_pixels: int) -> int:
    """K given for 784-pixel images, as a pixel count for ``n_pixels``-pixel images."""
    return int(round(k * n_pixels / REFERENCE_PIXELS))


def task_permutation(n_pixels: int, k: int, seed: int, task: int) -> np.ndarray:
    """Index array ``perm`` (images become ``x[:, perm]``) that moves exactly ``k`` pixels.

    ``k`` positions are drawn without replacement and deranged among themselves (no position
    keeps its pixel); the result is fixed by (seed, task, k). ``k = 0`` is the identity.
    """
    if not 0 <= k <= n_pixels:
        raise ConfigError("k", f"got {k} pixels; must be in 0..{n_pixels}")
    if k == 1:
        raise ConfigError("k", "a permutation cannot move exactly 1 pixel; use 0 or >= 2")
    perm = np.arange(n_pixels)
    if k == 0:
        return perm
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(task), int(k), 0x9E3779B9]))
    pos = rng.choice(n_pixels, size=k, replace=False)
    while True:  # rejection sampling of a derangement (succeeds with probability ~ 1/e)
        sigma = rng.permutation(k)
        if not np.any(sigma == np.arange(k)):
            break
    perm[pos] = pos[sigma]
    return perm


def make_tasks(n_pixels: int, n_tasks: int, k: int, seed: int) -> list[np.ndarray]:
    """Task 0: identity (original data); tasks 1..n-1: ``task_permutation(.., k, seed, j)``."""
    return [task_permutation(n_pixels, 0 if j == 0 else k, seed, j) for j in range(n_tasks)]


# ---- configuration -------------------------------------------------------------------------
@dataclass
class ContinualConfig:
    """Settings of one continual-learning study."""

    base: object = None
    """The run settings shared by every rule (a ``TrainConfig``: dataset, network, optimizer,
    lr, ...; its ``epochs``, ``grapes``, ``backend`` and ``seed`` are set per run)."""
    n_tasks: int = 5
    """Number of tasks, including task 0 (original data)."""
    k: int = 600
    """Pixels moved per permuted task, in 784-pixel units (scaled to the image size)."""
    k_pixels: int | None = None
    """Pixels moved, as an exact count for this dataset (overrides ``k``)."""
    epochs_per_task: int = 5
    """Training epochs on each task."""
    rules: tuple[str, ...] = ("sgd", "grapes")
    """Learning rules compared (keys of ``RULES``)."""
    backends: tuple[str, ...] = ("float32",)
    """Device models compared (e.g. float32, fixed8)."""
    seeds: tuple[int, ...] = (0,)
    """Seeds (network init, data order, permutations)."""

    def check(self) -> None:
        require(self.base is not None, "base", "a TrainConfig is required")
        require(self.n_tasks >= 2, "tasks", f"got {self.n_tasks}; must be >= 2 (forgetting is "
                                            "measured on a task once a later one is learnt; "
                                            "one task is 'grapes-hw train')")
        require(self.k >= 0, "k", f"got {self.k}; must be >= 0")
        require(self.k_pixels is None or self.k_pixels >= 0, "k_pixels",
                f"got {self.k_pixels}; must be >= 0")
        require(self.epochs_per_task >= 1, "epochs_per_task",
                f"got {self.epochs_per_task}; must be >= 1")
        require(len(self.rules) >= 1 and all(r in RULES for r in self.rules), "rules",
                f"got {','.join(self.rules)}; allowed values: {', '.join(RULES)}")
        require(len(self.backends) >= 1, "backends", "give at least one device model")
        require(len(self.seeds) >= 1 and all(s >= 0 for s in self.seeds), "seeds",
                f"got {list(self.seeds)}; expected non-negative integers")
        for r in self.rules:
            self.rule_config(r, self.backends[0], self.seeds[0]).check()

    def rule_config(self, rule: str, backend: str, seed: int):
        return self.base.replace(backend=backend, seed=seed, **RULES[rule])

    def pixels(self, n_pixels: int) -> int:
        return self.k_pixels if self.k_pixels is not None else scaled_k(self.k, n_pixels)


# ---- one run -----------------------------------------------------------------------------------
def run_sequence(cfg, data, n_tasks: int, k_pixels: int, epochs_per_task: int,
                 on_epoch=None) -> dict:
    """Train ``cfg`` (a TrainConfig) on the task sequence; returns the run's record with
    ``curve`` (one entry per epoch, epoch 0 = before training) and the summary metrics.

    The network and learner come from the model's builder and each task's epochs run in the
    one epoch loop every model uses (``training.driver.train_loop``: the same divergence check and
    Ctrl-C handling); after every epoch every task's test set is scored."""

    from grapes_hw.backends.registry import resolve_device_model
    from grapes_hw.functional.grapes import mean_factor
    from grapes_hw.training.driver import build_optimizer, train_loop
    from grapes_hw.training.train import _builder

    cfg.check()
    torch.manual_seed(cfg.run.seed)
    x_tr = torch.from_numpy(np.ascontiguousarray(data.x_train, dtype=np.float32))
    y_tr = torch.from_numpy(np.asarray(data.y_train, dtype=np.int64))
    x_te = torch.from_numpy(np.ascontiguousarray(data.x_test, dtype=np.float32))
    y_te = torch.from_numpy(np.asarray(data.y_test, dtype=np.int64))
    n_pixels = x_tr.shape[1]
    perms = [torch.from_numpy(p) for p in make_tasks(n_pixels, n_tasks, k_pixels, cfg.run.seed)]
    tests = [x_te[:, p] for p in perms]

    optimizer = build_optimizer(cfg)
    m = _builder(cfg.network.model)(cfg, resolve_device_model(cfg.device.backend), data, x_tr,
                                    optimizer)
    (lr, _), lr_scale = cfg.resolved_lr(), 1.0
    if cfg.rule.lr_matched:
        lr_scale = mean_factor(m.importances(), cfg.rule.grapes_lower)
        lr = lr * lr_scale
    curve: list[dict] = []
    status = "ok"
    none_x, none_y = x_tr[:0], y_tr[:0]

    def record(epoch: int, task: int, loss: float | None, train_acc: float | None,
               seconds: float, ok: bool = True) -> None:
        rec = {"epoch": epoch, "task": task, "epoch_in_task": (epoch - 1) % epochs_per_task + 1
               if epoch else 0, "train_loss": loss, "train_acc": train_acc,
               "acc": [m.evaluate(t, y_te) if ok else None for t in tests],
               "seen": [j <= task for j in range(n_tasks)] if epoch else [False] * n_tasks,
               "seconds": seconds}
        curve.append(rec)
        if on_epoch is not None:
            on_epoch(rec)

    record(0, -1, None, None, 0.0)
    epoch = 0
    for task in range(n_tasks):
        x_task = x_tr[:, perms[task]]

        def after(rec: dict, task: int = task, done: int = epoch) -> None:
            record(done + rec["epoch"], task, rec["train_loss"], rec["train_acc"],
                   rec["seconds"], ok=rec["train_loss"] is not None)

        # each task's data order from its own seed (the loop seeds its shuffling by cfg.run.seed)
        tcfg = cfg.replace(epochs=epochs_per_task, seed=cfg.run.seed + 7 * task)
        epochs, status, _ = train_loop(m.learner, m.net, tcfg, lr, x_task, y_tr, m.evaluate,
                                       none_x, none_y, none_x, none_y, on_epoch=after)
        epoch += len(epochs)
        if status != "ok":
            break

    out = {"config": to_dict(cfg.flat()), "lr_effective": lr, "lr_scale": lr_scale,
           "status": status, "curve": curve,
           "optimizer_state_bytes": int(optimizer.state_bytes())}
    out["config"]["layers"] = [int(v) for v in cfg.network.layers]
    out["config"]["lr"], out["config"]["lr_source"] = cfg.resolved_lr()
    out.update(summarize(curve, n_tasks, epochs_per_task))
    return out


def summarize(curve: list[dict], n_tasks: int, epochs_per_task: int) -> dict:
    """Accuracy matrix R[i][j] (after the last epoch of task i), average accuracy, forgetting,
    backward transfer and future accuracy from a run's ``curve``."""
    by_epoch = {r["epoch"]: r["acc"] for r in curve}
    R: list[list[float | None]] = []
    for i in range(n_tasks):
        acc = by_epoch.get((i + 1) * epochs_per_task)
        R.append(list(acc) if acc is not None else [None] * n_tasks)
    last = R[-1]
    ok = all(v is not None for row in R for v in row)
    out: dict = {"R": R}
    if not ok:
        out.update(average_accuracy=None, forgetting=None, backward_transfer=None,
                   future_accuracy=None)
        return out
    forgetting = []
    for j in range(n_tasks - 1):
        best = max(R[i][j] for i in range(j, n_tasks - 1))
        forgetting.append(best - last[j])
    out["average_accuracy"] = float(np.mean(last))
    out["forgetting"] = forgetting
    out["mean_forgetting"] = float(np.mean(forgetting)) if forgetting else 0.0
    out["backward_transfer"] = (float(np.mean([last[j] - R[j][j] for j in range(n_tasks - 1)]))
                                if n_tasks > 1 else 0.0)
    # before training task j (after task j-1): R[j-1][j]; task 0 before anything: epoch 0
    out["future_accuracy"] = [by_epoch[0][0]] + [R[j - 1][j] for j in range(1, n_tasks)]
    return out


# ---- the study ----------------------------------------------------------------------------------
RUN_FIELDS = ("backend", "rule", "seed", "status", "lr_effective", "R", "average_accuracy",
              "forgetting", "mean_forgetting", "backward_transfer", "future_accuracy",
              "optimizer_state_bytes", "seconds")
"""What ``summary.json`` keeps of each finished run (its curve is in ``continual.jsonl``)."""

_PER_RUN = ("rules", "backends", "seeds", "devices")
"""Settings that may grow between invocations on one folder; the others must match."""


def _label(r: dict) -> tuple:
    return (r["backend"], r["rule"], int(r["seed"]))


def _union(a, b) -> list:
    return list(a) + [v for v in b if v not in a]


def _previous_runs(out: Path, settings: dict) -> tuple[list[dict], float]:
    """The finished runs of an earlier invocation on ``out`` (with their curves), and the
    seconds it spent; ([], 0) for a new folder. A folder holding another study's runs is an
    error (``--out``) rather than overwritten; records of a run that did not finish (killed)
    are dropped so that run starts over."""
    sfile, jfile = out / "summary.json", out / "continual.jsonl"
    if not sfile.exists():
        if jfile.exists() and jfile.stat().st_size:
            raise ConfigError("--out", f"{out} holds continual.jsonl but no summary.json (an "
                                       "older, unfinished study); move it or choose another "
                                       "folder")
        return [], 0.0
    try:
        return _read_previous(out, sfile, jfile, settings)
    except ConfigError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        # hand-edited, or written by something else: refuse the folder, never rewrite it
        raise ConfigError("--out", f"{out} holds a damaged continual study ({type(e).__name__}: "
                                   f"{e}); move it or choose another folder") from None


def _read_previous(out: Path, sfile: Path, jfile: Path, settings: dict
                   ) -> tuple[list[dict], float]:
    old = json.loads(sfile.read_text())
    if not isinstance(old, dict) or not isinstance(old.get("runs", []), list):
        raise ValueError("summary.json is not a continual study's summary")
    mine = {k: v for k, v in settings.items() if k not in _PER_RUN}
    theirs = {k: v for k, v in old.get("settings", {}).items() if k not in _PER_RUN}
    for d in (mine, theirs):  # where the data was read from is not a setting
        d["base"] = {k: v for k, v in d.get("base", {}).items()
                     if k not in ("data_dir", "download")}
        d.get("dataset", {}).pop("source", None)
    from grapes_hw.backends.registry import device_content, load_device_model

    changed = sorted(b for b, d in (old.get("settings", {}).get("devices") or {}).items()
                     if (settings["devices"].get(b) or device_content(
                         load_device_model(b, "--out").to_dict())) != d)
    if changed:  # a device file edited since its runs: they would be kept as if current
        raise ConfigError("--out", f"{out} holds runs on {', '.join(changed)} made with another "
                                   "version of that device model (its parameters or noise "
                                   "changed since); choose another folder")
    if mine != theirs:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if "base" in diff:
            b1, b2 = mine.get("base", {}), theirs.get("base", {})
            diff = [d for d in diff if d != "base"] + sorted(
                f"base.{k}" for k in set(b1) | set(b2) if b1.get(k) != b2.get(k))
        raise ConfigError("--out", f"{out} holds a continual study with other settings "
                                   f"(differs in {', '.join(diff)}); choose another folder")
    done = {_label(r): dict(r) for r in old.get("runs", [])}
    curves: dict[tuple, list[dict]] = {k: [] for k in done}
    keep = []
    text = jfile.read_text() if jfile.exists() else ""
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines.pop()  # torn by a kill mid-write: a line of the run that did not finish
    for line in lines:
        rec = json.loads(line)
        if _label(rec) in done:
            keep.append(line)
            curves[_label(rec)].append({k: v for k, v in rec.items()
                                        if k not in ("backend", "rule", "seed")})
    for key, r in done.items():
        if not curves[key]:
            raise ConfigError("--out", f"{out}/continual.jsonl lacks the curve of the finished "
                                       f"run {key}; the folder is damaged")
        r["curve"] = curves[key]
    jfile.write_text("".join(x + "\n" for x in keep))
    return list(done.values()), float(old.get("seconds_total", 0.0))


def run_continual(cc: ContinualConfig, out_dir: str | os.PathLike, *, quiet: bool = False,
                  plots: bool = True, dataset=None) -> dict:
    """Every (backend, rule, seed) of ``cc``; writes continual.jsonl, summary.json, plots.

    Resumable: ``summary.json`` is rewritten after every finished run, and a second
    invocation on the same folder with the same settings keeps the runs it finds finished
    and trains only the others (so adding a rule or a seed trains only that). The summary and
    plots then cover every run in the folder."""
    from grapes_hw.backends.registry import device_content, load_device_model
    from grapes_hw.data.datasets import load_dataset
    from grapes_hw.training.driver import versions

    cc.check()
    devices = {b: device_content(load_device_model(b, "backends").to_dict())  # fail before
               for b in cc.backends}                                          # training
    out = Path(out_dir)
    base = cc.base
    data = dataset or load_dataset(base.data.dataset, data_dir=base.data.data_dir,
                                   train_subset=base.data.train_subset, seed=base.run.seed,
                                   download=base.data.download, progress=not quiet)
    n_pixels = int(np.prod(data.x_train.shape[1:]))
    k = cc.pixels(n_pixels)
    if not 0 <= k <= n_pixels or k == 1:
        raise ConfigError("k" if cc.k_pixels is None else "k_pixels",
                          f"gives {k} pixels for {n_pixels}-pixel images; need 0 or "
                          f"2..{n_pixels}")
    settings = {"n_tasks": cc.n_tasks, "k": cc.k, "k_pixels": k, "n_pixels": n_pixels,
                "epochs_per_task": cc.epochs_per_task, "rules": list(cc.rules),
                "backends": list(cc.backends), "seeds": list(cc.seeds), "devices": devices,
                "base": {**to_dict(base.flat()),
                         "layers": [int(v) for v in base.network.layers]},
                "dataset": {"name": data.name, "source": data.source,
                            "n_train": int(data.x_train.shape[0]),
                            "n_test": int(data.x_test.shape[0])}}
    runs, seconds_before = _previous_runs(out, settings)
    out.mkdir(parents=True, exist_ok=True)  # (after every check: no empty folder on an error)
    for key in ("rules", "backends", "seeds"):
        settings[key] = _union(list(dict.fromkeys(r[key[:-1]] for r in runs)), settings[key])
    settings["devices"] = {b: devices.get(b) or device_content(load_device_model(b).to_dict())
                           for b in settings["backends"]}
    t_start = time.perf_counter()
    allcc = replace(cc, rules=tuple(settings["rules"]), backends=tuple(settings["backends"]),
                    seeds=tuple(settings["seeds"]))

    def write_summary() -> dict:
        summary = {"settings": settings,
                   "runs": [{key: r[key] for key in RUN_FIELDS if key in r} for r in runs],
                   "mean": _means(runs), "comparisons": _comparisons(runs),
                   "seconds_total": seconds_before + time.perf_counter() - t_start,
                   "versions": versions()}
        tmp = out / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
        tmp.replace(out / "summary.json")
        return summary

    finished = {_label(r) for r in runs}
    todo = [(b, r, s) for b in cc.backends for r in cc.rules for s in cc.seeds
            if (b, r, s) not in finished]
    if runs and not quiet:
        print(f"{out}: {len(runs)} finished runs kept, {len(todo)} to run", flush=True)
    interrupted = False
    with open(out / "continual.jsonl", "a") as f:
        for backend, rule, seed in todo:
            label = {"backend": backend, "rule": rule, "seed": seed}

            def on_epoch(rec, label=label):
                f.write(json.dumps({**label, **rec}) + "\n")
                f.flush()
                if not quiet and rec["epoch"]:
                    accs = " ".join("  -  " if a is None else f"{a:.3f}" for a in rec["acc"])
                    print(f"{label['backend']:<10} {label['rule']:<12} seed {label['seed']} "
                          f"epoch {rec['epoch']:3d} (task {rec['task']})  acc per task: "
                          f"{accs}", flush=True)

            r = run_sequence(cc.rule_config(rule, backend, seed), data, cc.n_tasks, k,
                             cc.epochs_per_task, on_epoch)
            if r["status"] == "interrupted":  # not finished: the next invocation reruns it
                interrupted = True
                break
            r.update(label)
            r["seconds"] = float(sum(c["seconds"] for c in r["curve"]))
            runs.append(r)
            write_summary()
    summary = write_summary()
    summary["interrupted"] = interrupted
    if plots and runs:
        summary["plots"] = plot_continual(runs, allcc, out)
    return summary


def _means(runs: list[dict]) -> list[dict]:
    """Per (backend, rule): mean and sample std (ddof=1; None for one seed) over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["backend"], r["rule"]), []).append(r)
    out = []
    for (backend, rule), rs in groups.items():
        row = {"backend": backend, "rule": rule, "n_seeds": len(rs)}
        for key in ("average_accuracy", "mean_forgetting", "backward_transfer"):
            vals = [r.get(key) for r in rs if r.get(key) is not None]
            row[key] = float(np.mean(vals)) if vals else None
            row[key + "_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
        out.append(row)
    return out


COMPARED = ("average_accuracy", "mean_forgetting", "mean_future_accuracy")
"""Per-run numbers the summary compares between rules (Welch t-test over seeds)."""


def _comparisons(runs: list[dict]) -> list[dict]:
    """Each GRAPES rule against plain SGD, and GRAPES (propagating) against the lr-matched
    control, on the same backend: means and the two-sided Welch p of every ``COMPARED``
    number (future accuracy: the mean over tasks 1.. of the accuracy before training them)."""
    from grapes_hw.training.metrics import welch_p

    def value(r: dict, key: str):
        if key == "mean_future_accuracy":
            fa = r.get("future_accuracy")
            return float(np.mean(fa[1:])) if fa and len(fa) > 1 else None
        return r.get(key)

    pairs = [(g, "sgd") for g in ("grapes", "grapes-local", "lr-matched")]
    pairs.append(("grapes", "lr-matched"))
    out = []
    for backend in dict.fromkeys(r["backend"] for r in runs):
        for rule, baseline in pairs:
            a = [r for r in runs if r["backend"] == backend and r["rule"] == rule]
            b = [r for r in runs if r["backend"] == backend and r["rule"] == baseline]
            if not a or not b:
                continue
            row = {"backend": backend, "rule": rule, "baseline": baseline,
                   "n": len(a), "n_baseline": len(b)}
            for key in COMPARED:
                va = [v for v in (value(r, key) for r in a) if v is not None]
                vb = [v for v in (value(r, key) for r in b) if v is not None]
                row[key] = float(np.mean(va)) if va else None
                row[key + "_baseline"] = float(np.mean(vb)) if vb else None
                p = welch_p(va, vb)
                row[key + "_welch_p"] = None if math.isnan(p) else p
            out.append(row)
    return out


def _seeds_text(runs: list[dict], backend: str | None = None) -> str:
    """``"mean ± std over 3 seeds"`` (or ``"1 seed"``) for the runs of ``backend``."""
    n = len({r["seed"] for r in runs if backend is None or r["backend"] == backend})
    return "1 seed" if n == 1 else f"mean (± std) over {n} seeds"


def plot_continual(runs: list[dict], cc: ContinualConfig, out: Path) -> list[str]:
    """One figure per backend (a panel per task) and one of the mean seen-task accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    E, T = cc.epochs_per_task, cc.n_tasks
    colors = {"sgd": "tab:blue", "grapes": "tab:red", "grapes-local": "tab:orange",
              "lr-matched": "tab:green"}

    def stack(rs, fn):
        curves = []
        for r in rs:
            c = [fn(rec) for rec in r["curve"]]
            curves.append(c + [np.nan] * (T * E + 1 - len(c)))
        a = np.array(curves, dtype=float)
        with warnings.catch_warnings():  # all-NaN columns (e.g. no task seen yet) stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(a, 0), np.nanstd(a, 0)

    for backend in cc.backends:
        ncol = min(T, 5)
        nrow = math.ceil(T / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.7 * nrow), squeeze=False,
                                 sharey=True)
        for j in range(T):
            ax = axes[j // ncol][j % ncol]
            for rule in cc.rules:
                rs = [r for r in runs if r["backend"] == backend and r["rule"] == rule]
                if not rs:
                    continue
                mu, sd = stack(rs, lambda rec, j=j: np.nan if rec["acc"][j] is None
                               else rec["acc"][j])
                x = np.arange(mu.size)
                ax.plot(x, mu, color=colors.get(rule), label=rule, lw=1.5)
                if len(rs) > 1:
                    ax.fill_between(x, mu - sd, mu + sd, color=colors.get(rule), alpha=0.2)
            ax.axvspan(j * E, (j + 1) * E, color="0.9", zorder=0)
            for b in range(1, T):
                ax.axvline(b * E, color="0.6", lw=0.5)
            ax.set_title(f"task {j}" + (" (original)" if j == 0 else ""))
            ax.set_xlabel("epoch")
            if j % ncol == 0:
                ax.set_ylabel("test accuracy")
            ax.set_ylim(0, 1)
        for j in range(T, nrow * ncol):
            axes[j // ncol][j % ncol].axis("off")
        axes[0][0].legend(fontsize=8)
        k_label = (f"{cc.k_pixels} px" if cc.k_pixels is not None
                   else f"{cc.k} (784-px units)")
        fig.suptitle(f"continual learning, {backend}: K = {k_label}, "
                     f"{E} epochs per task (shaded: training on that task); "
                     f"{_seeds_text(runs, backend)}", fontsize=9)
        fig.tight_layout()
        path = out / f"continual_{backend.replace('/', '_').replace('.toml', '')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(str(path))

    fig, ax = plt.subplots(figsize=(6, 3.5))
    styles = ["-", "--", ":", "-."]
    for bi, backend in enumerate(cc.backends):
        for rule in cc.rules:
            rs = [r for r in runs if r["backend"] == backend and r["rule"] == rule]
            if not rs:
                continue

            def seen_mean(rec):
                v = [a for a, s in zip(rec["acc"], rec["seen"], strict=True) if s and a is not None]
                return float(np.mean(v)) if v else np.nan

            mu, _ = stack(rs, seen_mean)
            ax.plot(np.arange(mu.size), mu, styles[bi % 4], color=colors.get(rule),
                    label=f"{backend} {rule}")
    for b in range(1, T):
        ax.axvline(b * E, color="0.6", lw=0.5)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean test accuracy of tasks seen")
    k_label = f"{cc.k_pixels} px" if cc.k_pixels is not None else f"{cc.k} (784-px units)"
    ax.set_title(f"continual learning: K = {k_label}, {T} tasks x {E} epochs\n"
                 f"{_seeds_text(runs).replace(' (± std)', '')}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "continual_average.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(str(path))
    return files


__all__ = ["ContinualConfig", "make_tasks", "run_continual", "run_sequence", "scaled_k",
           "summarize", "task_permutation"]
