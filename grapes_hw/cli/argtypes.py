"""Command-line argument types: each error names the value, argparse adds the option name;
and ``check_options_act``, the check that every option given acts on the run.

A leaf module (it imports only the standard library and grapes_hw.errors at import time), so
every subcommand can use these without importing the CLI module or anything heavy.
"""

from __future__ import annotations

import argparse
import math
import re

from grapes_hw.errors import ConfigError


def positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{s!r}: must be a positive integer (>= 1)")
    return v


def nonneg_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{s!r}: must be >= 0")
    return v


def positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"{s!r}: must be a positive finite number")
    return v


def unit_interval(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not (0.0 <= v < 1.0):
        raise argparse.ArgumentTypeError(f"{s!r}: must be in [0, 1)")
    return v


def layer_list(s: str) -> tuple[int, ...]:
    parts = [p.strip() for p in s.split(",")]
    if not any(parts):
        raise argparse.ArgumentTypeError(
            f"{s!r}: expected comma-separated widths, e.g. 256,256,256")
    if not all(parts):  # "8,,8" or "8,": a width left out is a typo, not a shorter network
        raise argparse.ArgumentTypeError(
            f"{s!r}: an empty width between commas; expected comma-separated widths, "
            "e.g. 256,256,256")
    out = []
    for p in parts:
        try:
            v = int(p)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{s!r}: {p!r} is not an integer; expected comma-separated widths, e.g. 256,256,256"
            ) from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{s!r}: widths must be >= 1")
        out.append(v)
    return tuple(out)


def lower_bound(s: str) -> float | None:
    if s.lower() in ("none", "unbounded"):
        return None
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r}: expected a number in [0, 2] or 'none'") from None
    if not 0.0 <= v <= 2.0:
        raise argparse.ArgumentTypeError(f"{s!r}: expected a number in [0, 2] or 'none'")
    return v


def check_options_act(*cfgs) -> None:
    """An option typed on the command line must change the run (for ``continual``, at least
    one of its rules' runs ``cfgs``): ``--grapes-bits`` with GRAPES off, ``--momentum`` with
    SGD, ... would only be recorded. (A study may set them in ``[base]`` for a grid whose
    other runs use them, so this is the CLI's check.)"""
    from grapes_hw.training.config import TrainConfig, inactive_fields

    flats, default = [c.flat() for c in cfgs], TrainConfig().flat()
    unused = [inactive_fields(f) for f in flats]
    for name, where in unused[0].items():
        if flats[0][name] != default[name] and all(name in u for u in unused):
            where = re.sub(r"`(\w+)`", lambda m: "--" + m.group(1).replace("_", "-"), where)
            raise ConfigError("--" + name.replace("_", "-"),
                              f"has no effect here; it applies with {where}")
