"""Studies: resumable sweeps of training runs over a grid of settings.

A study TOML (see ``studies/README.md``) fixes a ``[base]`` configuration (``TrainConfig``
fields), crosses ``[axes]``, ``[zip.*]`` groups and ``[[variants]]``, drops ``[[exclude]]``
matches and has a ``[quick]`` table for a minutes-long variant. ``load_study`` expands and
validates every run before anything trains; ``run_sweep`` trains the runs not yet done, in local
worker processes or on a Dask cluster, and appends each finished run to ``DIR/runs.jsonl``.

``runs.jsonl`` holds one JSON object per line: the result of
:func:`grapes_hw.training.train.run` plus
``key`` (the run's stable key: a hash of its resolved configuration), or, for a run that raised,
``status`` "error" with the traceback in ``error`` and its exception line in
``error_summary``. Only the parent process writes it, each line
with one ``os.write`` of the whole line on an ``O_APPEND`` descriptor followed by ``fsync``, so a
killed sweep leaves at most one torn last line; on start that line is cut off and its run redone.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from grapes_hw.errors import ConfigError
from grapes_hw.studies.executors import _run_local, _with_dask
from grapes_hw.studies.keys import stale_reason
from grapes_hw.studies.spec import RunSpec, Study, load_study
from grapes_hw.studies.store import (
    LOCK_FILE,
    RUNS_FILE,
    STUDY_FILE,
    TUNING_FILE,
    _Lock,
    append_record,
    check_out_dir,
    error_line,
    latest_by_key,
    read_runs,
    write_json_atomic,
)
from grapes_hw.studies.tuning import (
    final_runs,
    label_text,
    tuning_choices,
    tuning_plan,
    tuning_report,
)


# ---- the sweep -----------------------------------------------------------------------------
@dataclass
class SweepSummary:
    out: str
    total: int
    skipped: int
    ran: int
    statuses: Counter = field(default_factory=Counter)
    seconds: float = 0.0


def default_out(study: Study) -> str:
    return str(Path("sweeps") / (study.name + ("-quick" if study.quick else "")))


def check_done(specs: list[RunSpec], done: dict[str, dict], models: dict[str, dict],
               retry_errors: bool = False) -> tuple[list[RunSpec], dict[str, str]]:
    """``(todo, stale)``: the runs of ``specs`` without a usable result, and for each stale
    one (a result recorded with another configuration or device model) the reason."""
    todo: list[RunSpec] = []
    stale: dict[str, str] = {}
    for s in specs:
        rec = done.get(s.key)
        if rec is None:
            todo.append(s)
            continue
        why = stale_reason(rec, s, models)
        if why:
            stale[s.key] = why
            todo.append(s)
        elif retry_errors and rec.get("status") == "error":
            todo.append(s)
    return todo, stale


def check_folder(out_dir: Path, study: Study) -> None:
    """``out_dir`` may take this study's runs: it is (or can become) a writable folder, and
    holds no other study's results (its ``study.json`` names another study, or the quick
    variant of this one): mixing them would merge two studies' runs into one report and
    overwrite the other's ``study.json``."""
    check_out_dir(out_dir, "--out")
    sj = out_dir / STUDY_FILE
    if not sj.is_file():
        return
    try:
        other = json.loads(sj.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ConfigError("--out", f"{sj} cannot be read ({e}); is {out_dir} a sweep folder?"
                          ) from None
    name, quick = (other.get("name"), bool(other.get("quick"))) if isinstance(other, dict) \
        else (None, False)
    if (name, quick) != (study.name, study.quick):
        what = f"study {name!r}" + (" (quick)" if quick else "")
        raise ConfigError("--out", f"{out_dir} holds the results of {what}, not of study "
                                   f"{study.name!r}{' (quick)' if study.quick else ''}; "
                                   "choose another folder")


def _study_json(study: Study, runs: list[RunSpec], waiting: int = 0) -> dict:
    """``study.json``: the study's text and its planned runs; in a tuned study the tuning
    runs, the study's runs of the groups tuned so far and how many more wait for tuning."""
    return {"name": study.name, "description": study.description, "question": study.question,
            "path": study.path, "quick": study.quick, "requires": study.requires,
            "tune": study.tune.to_dict() if study.tune is not None else None,
            "runs": [{"key": s.key, "label": s.label, "config": s.config_dict(),
                      "phase": s.phase} for s in runs],
            "waiting_for_tuning": waiting}


def _tune_label(spec: RunSpec, tuned: str) -> dict:
    return {k: v for k, v in spec.label.items() if k not in ("seed", tuned)}


def _tune_chunks(tune_runs: list[RunSpec], min_runs: int) -> list[list[RunSpec]]:
    """The tuning runs cut into consecutive whole groups of at least ``min_runs`` runs (the
    last may be smaller): the sweep runs a chunk's tuning, then the seeds of the groups it
    tuned, then the next chunk. So a sweep stopped part-way leaves finished groups, tuned
    and seeded, rather than a tuning phase with no study runs; ``min_runs`` (twice the local
    workers; all runs at once on Dask) keeps every worker busy within a chunk."""
    by_group: dict[str, list[RunSpec]] = {}
    for r in tune_runs:
        by_group.setdefault(r.meta["tune_group"], []).append(r)
    chunks: list[list[RunSpec]] = [[]]
    for runs in by_group.values():
        if len(chunks[-1]) >= min_runs:
            chunks.append([])
        chunks[-1].extend(runs)
    return [c for c in chunks if c]


def run_sweep(study: Study | str | Path, *, out: str | None = None, workers: int = 2,
              scheduler: str | None = None, dask_local: int | None = None, quick: bool = False,
              retry_errors: bool = False, threads: int | None = None, quiet: bool = False,
              log: Callable[[str], None] | None = None) -> SweepSummary:
    """Run the study's missing runs; returns counts. See the module docstring. A study with
    ``[tune]`` runs in two phases: the tuning runs, then the study's runs at the chosen
    values (``tuning.json`` records the choices); both resume from ``runs.jsonl``."""
    if not isinstance(study, Study):
        study = load_study(study, quick=quick)
    log = log or (lambda s: print(s, flush=True))
    out_dir = Path(out or default_out(study))
    check_folder(out_dir, study)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError("--out", f"cannot create {out_dir}: {e.strerror or e}") from None
    if not os.access(out_dir, os.W_OK):
        raise ConfigError("--out", f"directory is not writable: {out_dir}")
    runs_path = out_dir / RUNS_FILE
    t0 = time.time()
    models: dict[str, dict] = {}
    backend = (f"Dask scheduler {scheduler}" if scheduler else
               f"Dask LocalCluster, {dask_local} workers" if dask_local else
               f"{workers} local worker process{'es' if workers > 1 else ''}")
    with _Lock(out_dir / LOCK_FILE):
        records, warnings = read_runs(runs_path, repair=True)
        for w in warnings:
            log(f"warning: {w}")
        done = latest_by_key(records)
        summary = SweepSummary(str(out_dir), 0, 0, 0)

        def execute(specs: list[RunSpec], what: str) -> None:
            todo, stale = check_done(specs, done, models, retry_errors)
            for k, why in stale.items():
                log(f"warning: the recorded result of {k} is stale ({why}); running it again")
            skipped = len(specs) - len(todo)
            summary.total += len(specs)
            summary.skipped += skipped
            for s in specs:
                if s not in todo:
                    summary.statuses[done[s.key].get("status", "?")] += 1
            if not quiet and (todo or study.tune is None):
                log(f"study {study.name}{' (quick)' if study.quick else ''}{what}: "
                    f"{len(specs)} runs, {skipped} already done, {len(todo)} to run on "
                    f"{backend} -> {runs_path}")
            if todo:
                _execute(study, todo, len(specs), skipped, done, summary, runs_path, log,
                         quiet, scheduler, dask_local, workers, threads)

        if study.tune is None:
            write_json_atomic(out_dir / STUDY_FILE, _study_json(study, study.runs))
            execute(study.runs, "")
        else:
            _, links, tune_runs = tuning_plan(study)

            def refresh() -> list[RunSpec]:
                """Choices from the tuning runs done so far -> tuning.json, and study.json
                listing the tuning runs and the study's runs of the groups tuned so far."""
                choices, _ = tuning_choices(study, done)
                write_json_atomic(out_dir / TUNING_FILE, tuning_report(study, choices))
                finals, waiting = final_runs(study, choices)
                write_json_atomic(out_dir / STUDY_FILE,
                                  _study_json(study, tune_runs + finals, waiting))
                return finals

            refresh()
            started: set[str] = set()
            for chunk in _tune_chunks(tune_runs, 2 * workers if not (scheduler or dask_local)
                                      else len(tune_runs)):
                gids = {r.meta["tune_group"] for r in chunk}
                execute(chunk, f", tuning {study.tune.field}"
                        + (f" ({label_text(_tune_label(chunk[0], study.tune.field))})"
                           if len(gids) == 1 else ""))
                ready = [f for f in refresh() if f.key not in started and (
                    f.meta["tune_group"] in gids or links.get(f.meta["tune_group"]) in gids)]
                started |= {f.key for f in ready}
                if ready:
                    execute(ready, f", at the tuned {study.tune.field}")
            finals = refresh()
            rest = [f for f in finals if f.key not in started]  # e.g. no tuning runs at all
            if rest:
                execute(rest, f", at the tuned {study.tune.field}")
            waiting = len(study.runs) - len(finals)
            if waiting:  # tuning runs interrupted (a finished sweep always has every choice)
                log(f"warning: {waiting} runs wait for tuning runs that did not finish")
            choices, _ = tuning_choices(study, done)
            for c in choices.values():
                if c.note and not quiet:
                    log(f"tuning {c.group}: {study.tune.field} = {c.value} ({c.note})")
    summary.seconds = time.time() - t0
    return summary


def _execute(study: Study, todo: list[RunSpec], n_total: int, skipped: int,
             done: dict[str, dict], summary: SweepSummary, runs_path: Path, log, quiet: bool,
             scheduler, dask_local, workers: int, threads) -> None:
    """Train ``todo`` on the chosen executor, appending each result to ``runs_path`` (and to
    ``done``) as it arrives."""
    from tqdm import tqdm

    bar = tqdm(total=n_total, initial=skipped, unit="run", desc=study.name,
               disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True)
    by_key = {s.key: s for s in todo}
    finished: set[str] = set()
    ran = [0]

    def on_result(res: dict) -> None:
        k = res.get("key")
        if k not in by_key or k in finished:
            return
        if res.get("status") == "interrupted":  # Ctrl-C in a worker: not a result
            return
        spec = by_key[k]
        if spec.phase != "study":
            res = {**res, "phase": spec.phase, **spec.meta}
        append_record(runs_path, res)
        done[k] = res
        finished.add(k)
        ran[0] += 1
        summary.ran += 1
        summary.statuses[res.get("status", "?")] += 1
        bar.update(1)
        if not quiet:
            acc = res.get("best_test_acc") if spec.phase == "study" else max(
                (e["val_acc"] for e in res.get("epochs") or [] if e.get("val_acc") is not None),
                default=None)
            what = "best" if spec.phase == "study" else "val"
            msg = (f"[{skipped + ran[0]}/{n_total}] {res.get('status'):8s} {what} "
                   f"{acc if acc is not None else float('nan'):.4f}  {label_text(spec.label)}")
            if res.get("status") == "error":
                msg += f"  ({error_line(res)})"
            if bar.disable:
                log(msg)
            else:
                bar.write(msg)

    try:
        if scheduler or dask_local:
            _with_dask(todo, scheduler, dask_local, on_result)
        else:
            n_threads = threads if threads is not None else (1 if workers > 1 else None)
            _run_local(todo, workers, n_threads, on_result)
    finally:
        bar.close()


def dry_run(study: Study, out: str | None, log: Callable[[str], None] = print) -> int:
    """List the study's runs with their state in ``out``: done, to run, or stale (and why);
    with ``[tune]``, the tuning runs, then the runs at the values tuned so far."""
    out_dir = Path(out or default_out(study))
    check_folder(out_dir, study)
    records, warnings = read_runs(out_dir / RUNS_FILE)
    for w in warnings:
        log(f"warning: {w}")
    done = latest_by_key(records)
    models: dict[str, dict] = {}
    counts: Counter[str] = Counter()

    def show(specs: list[RunSpec], title: str | None) -> None:
        if title:
            log(title)
        todo, stale = check_done(specs, done, models)
        todo_keys = {s.key for s in todo}
        for s in specs:
            if s.key in stale:
                state = f"stale: {stale[s.key]}"
                counts["stale"] += 1
            elif s.key in todo_keys:
                state = "to run"
                counts["to run"] += 1
            else:
                state = f"done ({done[s.key].get('status')})"
                counts["done"] += 1
            log(f"{s.key}  {state:<10}  {label_text(s.label)}")

    if study.tune is None:
        show(study.runs, None)
    else:
        _, _, tune_runs = tuning_plan(study)
        show(tune_runs, f"tuning runs ({study.tune.field} in {study.tune.values}, "
                        f"metric {study.tune.metric}):")
        choices, _ = tuning_choices(study, done)
        finals, waiting = final_runs(study, choices)
        show(finals, "runs at the tuned values:" if finals else None)
        if waiting:
            counts["wait for tuning"] += waiting
            log(f"{waiting} runs wait for their group's tuning")
    parts = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    log(f"{sum(counts.values())} runs ({parts}) in {out_dir}"
        + (f"; {study.duplicates} duplicate configurations merged" if study.duplicates else ""))
    return 0
