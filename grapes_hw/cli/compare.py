"""``grapes-hw compare``: the command's options.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grapes_hw.studies import compare
from grapes_hw.studies.compare import compare_table, load_results, render


def add_cli(sub) -> None:
    p = sub.add_parser("compare", help="side-by-side table of runs (result.json / runs.jsonl)",
                       description=compare.__doc__.split("\n\n", 1)[1])
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="result.json of 'grapes-hw train --out', or a sweep's runs.jsonl")
    p.add_argument("--all", action="store_true", help="show the shared settings too")
    p.add_argument("--format", choices=("md", "csv"), default="md",
                   help="Markdown table (default) or CSV")
    p.add_argument("--out", default=None, help="write the table here instead of stdout")
    p.set_defaults(func=cmd_compare)


def _holds_results(path: Path) -> bool:
    """Whether ``path`` is a run's result.json or a sweep's runs.jsonl: the whole file, or
    its first line, a JSON object with a ``config`` or a ``key``."""
    import json

    try:
        data = path.read_bytes()
    except OSError:
        return False
    for text in (data, data.split(b"\n", 1)[0]):
        try:
            rec = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            continue
        return isinstance(rec, dict) and ("config" in rec or "key" in rec)
    return False


def cmd_compare(args) -> int:
    if args.out is not None:
        from grapes_hw.errors import ConfigError
        from grapes_hw.studies.store import check_out_file

        out = check_out_file(args.out).resolve()
        if any(Path(f).resolve() == out for f in args.files):
            raise ConfigError("--out", f"{args.out} is one of the files compared; writing the "
                                       "table there would destroy it")
        if out.is_file() and _holds_results(out):
            raise ConfigError("--out", f"{args.out} holds run results (a result.json or "
                                       "runs.jsonl); write the table elsewhere")
    skipped: list[str] = []
    runs = load_results(args.files, skipped)
    for w in skipped:
        print(f"warning: {w}", file=sys.stderr)
    header, rows, shared = compare_table(runs, args.all)
    text = render(header, rows, args.format)
    if args.format == "md" and not args.all:
        text += f"\n{len(shared)} settings are the same in every run (--all shows them).\n"
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0
