"""The rule x backend table of docs/results.md, from a tuned PCM sweep's runs.jsonl.

    python tools/pcm_table.py studies/results/pcm_insitu

One row per (backend, rule), from the study's runs (tuning runs left out): best test accuracy
mean ± std over the seeds that finished (n), the tuned lr, the plateau-fit slowness (accepted
fits only, re-checked), pulses per epoch (estimated programming steps on aihwkit tiles;
"digital writes" for float), digital memory (the weights' digital accumulator where the device
has one, plus optimizer state, in bytes) and the Welch p value against SGD on the same
backend (n/a with fewer than 2 runs on a side). Prints Markdown.
"""

from __future__ import annotations

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


def main(folder: str) -> int:
    recs = [json.loads(x) for x in (Path(folder) / "runs.jsonl").read_text().splitlines()
            if x.strip()]
    last: dict[str, dict] = {}
    for r in recs:
        last[r["key"]] = r
    runs = [recheck(r) for r in last.values() if r.get("phase") is None
            and r.get("status") in ("ok", "diverged")]
    cells: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        cells.setdefault((r["config"]["backend"], rule_of(r["config"])), []).append(r)
    order = ["SGD", "SGD + GRAPES (propagating)", "SGD + GRAPES (local)",
             "SGD, lr-matched control", "momentum", "momentum + GRAPES (propagating)"]
    backends = list(dict.fromkeys(b for b, _ in sorted(cells, key=lambda k: k[0])))
    print("| backend | rule | n | lr | best test acc | slowness | pulses / epoch | digital "
          "memory (B) | Welch p vs SGD |")
    print("|---|---|---|---|---|---|---|---|---|")
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
            print(f"| {b} | {rule} | {len(rs)} | {'/'.join(f'{v:.3g}' for v in lr)} | "
                  f"{fmt(acc)} | {fmt(slow, 2) if slow else 'n/a'} | {pulse_txt} | "
                  f"{statistics.mean(mem):.3g} | "
                  f"{'n/a' if math.isnan(p) else f'{p:.2g}'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "studies/results/pcm_insitu"))
