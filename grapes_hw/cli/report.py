"""``grapes-hw report``: the command's options.
"""

from __future__ import annotations

from grapes_hw.studies.report import write_report


def add_cli(sub) -> None:
    p = sub.add_parser("report", help="write report.md, CSV tables and plots of a sweep folder")
    p.add_argument("dir", help="sweep results folder (holding runs.jsonl)")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    out = write_report(args.dir)
    print(f"wrote {out}")
    return 0
