"""Results as files: the append-only ``runs.jsonl`` (torn lines repaired), atomic JSON writes
and the lock that keeps two sweeps from writing one folder.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path
from typing import Any

from grapes_hw.errors import ConfigError

RUNS_FILE = "runs.jsonl"
STUDY_FILE = "study.json"
LOCK_FILE = ".sweep.lock"


# ---- output paths --------------------------------------------------------------------------
def _existing_ancestor(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_out_file(path: str | Path, option: str = "--out") -> Path:
    """The file ``path`` can be written: not a folder, in an existing writable folder. Checked
    before anything is computed, so a bad path costs nothing."""
    if not str(path).strip():
        raise ConfigError(option, "is empty; give a file path")
    p = Path(path)
    if p.is_dir():
        raise ConfigError(option, f"{p} is a directory; give a file path")
    parent = p.resolve().parent
    if not parent.is_dir():
        up = _existing_ancestor(parent)
        if up.exists() and not up.is_dir():
            raise ConfigError(option, f"{up} is a file, not a directory")
        raise ConfigError(option, f"directory does not exist: {parent}")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ConfigError(option, f"not writable: {p if p.exists() else parent}")
    return p


def check_out_dir(path: str | Path, option: str = "--out") -> Path:
    """The folder ``path`` exists or can be created, and can be written."""
    if not str(path).strip():  # Path("") is the current folder: never meant
        raise ConfigError(option, "is empty; give a folder path")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(option, f"{p} exists and is not a directory")
    up = _existing_ancestor(p.resolve())
    if not up.is_dir():
        raise ConfigError(option, f"{up} is a file, not a directory")
    if not os.access(up, os.W_OK):
        raise ConfigError(option, f"directory is not writable: {up}")
    return p


# ---- runs.jsonl ----------------------------------------------------------------------------
def read_runs(path: str | Path, *, repair: bool = False, need_key: bool = True
              ) -> tuple[list[dict], list[str]]:
    """Parse runs.jsonl; returns (records, warnings).

    A torn last line (one without its newline: a write cut short by a kill) is ignored, and
    with ``repair`` cut off so the next append starts on a fresh line. Complete lines that
    are not results (edited by hand, or another tool's) are skipped with a warning and never
    cut: nothing but a torn tail is removed from the file.
    """
    path = Path(path)
    warnings: list[str] = []
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], warnings
    records: list[dict] = []
    pos = 0
    lineno = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        lineno += 1
        if nl < 0:
            warnings.append(f"{path}: line {lineno} is torn (no newline); ignored")
            break
        line = data[pos:nl]
        pos = nl + 1
        if not line.strip():
            continue
        rec, problem = _parse_line(line, need_key)
        if problem:
            warnings.append(f"{path}: line {lineno} is not a valid result ({problem}); "
                            "ignored (kept in the file)")
            continue
        records.append(rec)
    if repair and pos < len(data):
        with open(path, "r+b") as f:
            f.truncate(pos)
            f.flush()
            os.fsync(f.fileno())
        warnings.append(f"{path}: cut the {len(data) - pos} bytes of its torn last line")
    return records, warnings


def _parse_line(line: bytes, need_key: bool = True) -> tuple[dict | None, str]:
    try:
        rec = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None, "not JSON"
    problem = record_problem(rec, need_key=need_key)
    return (None, problem) if problem else (rec, "")


_NUMBERS = ("best_test_acc", "final_test_acc", "slowness", "seconds_total", "pulses_total",
            "optimizer_state_bytes", "diverged_epoch")
_EPOCH_NUMBERS = ("epoch", "train_loss", "train_acc", "test_acc", "val_acc", "seconds",
                  "pulses")
_TABLES = ("config", "memory", "device_model", "dataset", "plateau_fit")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def record_problem(rec, need_key: bool = False) -> str:
    """What makes ``rec`` not a run result ("" when it is one): the fields the reports read,
    with the types ``result_record`` writes them (numbers or null, tables, a list of epoch
    tables). A hand-edited or foreign record is refused here, with the field named, rather
    than crashing a report or being averaged in."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    if need_key and not isinstance(rec.get("key"), str):
        return "no 'key'"
    if not isinstance(rec.get("status"), str):
        return "no 'status'"
    if not isinstance(rec.get("config"), dict):
        return "no 'config' table"
    for k in _TABLES:
        if rec.get(k) is not None and not isinstance(rec[k], dict):
            return f"{k!r} is not a table"
    for k in _NUMBERS:
        if rec.get(k) is not None and not _is_number(rec[k]):
            return f"{k!r}: got {rec[k]!r}, expected a number or null"
    epochs = rec.get("epochs", [])
    if not isinstance(epochs, list):
        return "'epochs' is not a list"
    for i, e in enumerate(epochs, 1):
        if not isinstance(e, dict):
            return f"epochs[{i}] is not a table"
        for k in _EPOCH_NUMBERS:
            if e.get(k) is not None and not _is_number(e[k]):
                return f"epochs[{i}].{k}: got {e[k]!r}, expected a number or null"
    return ""


def latest_by_key(records: list[dict]) -> dict[str, dict]:
    """The last record of each key (a rerun error replaced by its later result)."""
    out: dict[str, dict] = {}
    for r in records:
        out.pop(r["key"], None)
        out[r["key"]] = r
    return out


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*: \S")


def exception_summary(e: BaseException) -> str:
    """``Type: first line of the message`` (a message may go on with hints on more lines)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def error_line(rec: dict) -> str:
    """One line saying why a run failed: the record's ``error_summary``, or (a record written
    before there was one) the traceback's exception line, not its last line, which for a
    message of several lines is only the message's end (a data error showed its hint)."""
    if rec.get("error_summary"):
        return str(rec["error_summary"])
    lines = [ln for ln in (rec.get("error") or "").strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if _EXCEPTION_LINE.match(ln):
            return ln
    return lines[-1].strip() if lines else "?"


def append_record(path: str | Path, record: dict) -> None:
    """Append one line atomically: a single write of the whole line on O_APPEND, then fsync."""
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        n = os.write(fd, line)
        while n < len(line):  # only on a full disk or similar; the reader drops a torn tail
            n += os.write(fd, line[n:])
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _Lock:
    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self.fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise ConfigError("--out", f"another sweep is writing {self.path.parent}") \
                    from None
            raise
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)


TUNING_FILE = "tuning.json"
