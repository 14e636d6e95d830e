"""``grapes-hw sweep``: the command's options and what it prints.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grapes_hw.studies.spec import load_study
from grapes_hw.studies.store import RUNS_FILE
from grapes_hw.studies.sweep import dry_run, run_sweep


def add_cli(sub) -> None:
    from grapes_hw.cli.argtypes import positive_int

    p = sub.add_parser("sweep", help="run a study (a grid of runs), resumable, in parallel")
    p.add_argument("study", help="study TOML file, or the name of one in studies/")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="local worker processes (default 2); not with --scheduler or "
                        "--dask-local, whose workers Dask runs")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on this Dask distributed scheduler (e.g. tcp://host:8786)")
    g.add_argument("--dask-local", type=positive_int, default=None, metavar="N",
                   help="run on a local Dask cluster of N worker processes")
    p.add_argument("--out", default=None,
                   help="results folder (default sweeps/NAME, sweeps/NAME-quick with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="the study's [quick] variant (small data, few epochs, minutes)")
    p.add_argument("--retry-errors", action="store_true",
                   help="rerun runs recorded with status error")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-run lines")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    if args.workers is not None and (args.scheduler or args.dask_local):
        from grapes_hw.errors import ConfigError

        raise ConfigError("--workers", "sets local worker processes, but the runs go to Dask ("
                                       f"{'--scheduler' if args.scheduler else '--dask-local'}"
                                       "), which runs its own workers; leave --workers out")
    study = load_study(args.study, quick=args.quick)
    if args.dry_run:
        return dry_run(study, args.out)
    workers = args.workers if args.workers is not None else 2
    summary = run_sweep(study, out=args.out, workers=workers, scheduler=args.scheduler,
                        dask_local=args.dask_local, retry_errors=args.retry_errors,
                        quiet=args.quiet)
    st = ", ".join(f"{n} {k}" for k, n in sorted(summary.statuses.items()))
    print(f"done: {summary.total} runs ({st}); ran {summary.ran} now in {summary.seconds:.1f}s"
          f" -> {Path(summary.out) / RUNS_FILE}")
    if summary.statuses.get("error"):
        print(f"grapes-hw sweep: {summary.statuses['error']} run(s) failed with an error; "
              "see 'error' in runs.jsonl, rerun them with --retry-errors", file=sys.stderr)
        return 1
    return 0
