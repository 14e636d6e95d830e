"""The rule x backend table of docs/results.md, from a tuned PCM sweep's runs.jsonl.

    python tools/pcm_table.py studies/results/pcm_insitu
    python tools/pcm_table.py studies/results/crossbar --vs-backend pcm-insitu
    python tools/pcm_table.py studies/results/{pcm_insitu,crossbar} --backend pcm-insitu

One row per (backend, rule), from the study's runs (tuning runs left out): best test accuracy
mean ± std over the seeds that finished (n), the tuned lr, the plateau-fit slowness (accepted
fits only, re-checked; "(k of n fits)" where some were rejected), pulses per epoch (estimated
programming steps on aihwkit tiles; "digital writes" for float), digital memory (the weights'
digital accumulator where the device has one, plus optimizer state, in bytes) and the Welch p
value against SGD on the same backend (n/a with fewer than 2 runs on a side). With
``--vs-backend B`` a last column gives each row's accuracy difference to the same rule on backend B,
in points, with its Welch p (the crossbar table: every periphery setting against the unchanged
recipe). Several folders are pooled: a cell then holds the runs of that (backend, rule) from
all of them (the lr column lists every lr among them), and a run key recorded in two folders
counts twice (on devices whose noise cannot be seeded, such as aihwkit's pulsed tiles, the same
configuration run again is a fresh replicate); ``n`` says how many. ``--backend`` keeps only
the named backends. Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grapes_hw.studies.analysis import recheck
from grapes_hw.training.metrics import welch_p


def rule_of(c: dict) -> str:
    if c.get("lr_matched"):
        return "SGD, lr-matched control"
    opt = {"sgd": "SGD", "momentum": "momentum"}.get(c["optimizer"], c["optimizer"])
    g = c.get("grapes", "off")
    return opt if g == "off" else f"{opt} + GRAPES ({g})"


def fmt(vals: list[float], digits: int = 3) -> str:
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def load_runs(folder: str) -> list[dict]:
    """The study's finished runs (latest record per key within the folder; tuning runs left
    out), re-checked."""
    path = Path(folder) / "runs.jsonl"
    if not path.is_file():
        raise SystemExit(f"pcm_table: no runs.jsonl in {folder}")
    last: dict[str, dict] = {}
    for x in path.read_text().splitlines():
        if x.strip():
            r = json.loads(x)
            last[r["key"]] = r
    return [recheck(r) for r in last.values() if r.get("phase") is None
            and r.get("status") in ("ok", "diverged")]


POOLED_FIELDS = {"seed", "lr", "lr_effective", "lr_scale", "lr_source", "data_dir",
                 "download"}
"""Settings a cell may pool over: its seeds (and replicates), at the lr each rule had."""


def check_poolable(backend: str, rule: str, rs: list[dict]) -> None:
    """A cell holds one configuration's seeds: refuse runs that differ in anything else."""
    configs = [{k: json.dumps(v, sort_keys=True) for k, v in r["config"].items()
                if k not in POOLED_FIELDS} for r in rs]
    for k in sorted({k for c in configs for k in c}):
        # a setting added later is missing from older records: null is its "not used"
        vals = sorted({c.get(k, "null") for c in configs})
        if len(vals) > 1:
            raise SystemExit(f"pcm_table: the {backend} / {rule} runs differ in {k} "
                             f"({', '.join(vals)}); this table pools only seeds and "
                             "replicates of one configuration: pass --backend or fewer "
                             "folders, or use the study's report")


def table(runs: list[dict], vs_backend: str | None = None) -> list[str]:
    """The Markdown lines of the rule x backend table."""
    cells: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        cells.setdefault((r["config"]["backend"], rule_of(r["config"])), []).append(r)
    for (b, rule), rs in cells.items():
        check_poolable(b, rule, rs)
    known = ["SGD", "SGD + GRAPES (propagating)", "SGD + GRAPES (local)",
             "SGD, lr-matched control", "momentum", "momentum + GRAPES (propagating)"]
    order = known + sorted({rule for _, rule in cells} - set(known))
    backends = list(dict.fromkeys(b for b, _ in sorted(cells, key=lambda k: k[0])))
    if vs_backend is not None:
        if vs_backend not in backends:
            raise SystemExit(f"pcm_table: --vs-backend {vs_backend!r} has no runs here; "
                             f"backends: {', '.join(backends)}")
        backends = [vs_backend] + [b for b in backends if b != vs_backend]
    extra = f" Δ vs {vs_backend} (Welch p) |" if vs_backend else ""
    lines = ["| backend | rule | n | lr | best test acc | slowness | pulses / epoch | digital "
             "memory (B) | Welch p vs SGD |" + extra,
             "|---|---|---|---|---|---|---|---|---|" + ("---|" if vs_backend else "")]
    for b in backends:
        sgd = [r["best_test_acc"] for r in cells.get((b, "SGD"), [])]
        for rule in order:
            rs = cells.get((b, rule))
            if not rs:
                continue
            acc = [r["best_test_acc"] for r in rs]
            lr = sorted({r["config"].get("lr_effective") or r["config"]["lr"] for r in rs})
            slow = [r["slowness"] for r in rs if r.get("slowness") is not None]
            n_ep = [len(r["epochs"]) for r in rs]
            pulses = [r["pulses_total"] / e for r, e in zip(rs, n_ep, strict=True)]
            unit = rs[0].get("pulses_unit", "")
            mem = [r["memory"]["weight_digital_bytes"] + r["optimizer_state_bytes"] for r in rs]
            p = welch_p(acc, sgd) if rule != "SGD" else math.nan
            pulse_txt = (f"{statistics.mean(pulses):.3g}" if unit.startswith("estimated")
                         else "digital writes")
            slow_txt = fmt(slow, 2) if slow else "n/a"
            if slow and len(slow) < len(rs):  # a fit rejected: say over how many runs
                slow_txt += f" ({len(slow)} of {len(rs)} fits)"
            row = (f"| {b} | {rule} | {len(rs)} | {'/'.join(f'{v:.3g}' for v in lr)} | "
                   f"{fmt(acc)} | {slow_txt} | {pulse_txt} | "
                   f"{statistics.mean(mem):.3g} | {'n/a' if math.isnan(p) else f'{p:.2g}'} |")
            if vs_backend:
                ref = [r["best_test_acc"] for r in cells.get((vs_backend, rule), [])]
                if b == vs_backend or not ref:
                    row += " |"
                else:
                    q = welch_p(acc, ref)
                    d = 100 * (statistics.mean(acc) - statistics.mean(ref))
                    row += f" {d:+.1f} ({'n/a' if math.isnan(q) else f'{q:.2g}'}) |"
            lines.append(row)
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="*", default=["studies/results/pcm_insitu"],
                    help="results folders (several are pooled)")
    ap.add_argument("--vs-backend", default=None, metavar="B",
                    help="add each row's difference to the same rule on backend B")
    ap.add_argument("--backend", action="append", default=None, metavar="B",
                    help="only these backends (repeatable)")
    args = ap.parse_args(argv)
    runs = [r for f in args.folders for r in load_runs(f)
            if args.backend is None or r["config"]["backend"] in args.backend]
    print("\n".join(table(runs, args.vs_backend)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
