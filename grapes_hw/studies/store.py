"""Results as files: the append-only ``runs.jsonl`` (torn lines repaired), atomic JSON writes
and the lock that keeps two sweeps from writing one folder.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from grapes_hw.errors import ConfigError

RUNS_FILE = "runs.jsonl"
STUDY_FILE = "study.json"
LOCK_FILE = ".sweep.lock"


# ---- runs.jsonl ----------------------------------------------------------------------------
def read_runs(path: str | Path, *, repair: bool = False) -> tuple[list[dict], list[str]]:
    """Parse runs.jsonl; returns (records, warnings).

    A torn or invalid tail (a line without its newline, or complete lines at the end that do
    not parse as a result) is ignored, and with ``repair`` cut off so the next append starts on
    a fresh line. Invalid lines in the middle are skipped with a warning.
    """
    path = Path(path)
    warnings: list[str] = []
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], warnings
    records: list[dict] = []
    good_end = 0      # byte offset just after the last valid line
    pos = 0
    bad_pending: list[int] = []
    lineno = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        lineno += 1
        if nl < 0:
            bad_pending.append(lineno)
            warnings.append(f"{path}: line {lineno} is torn (no newline); ignored")
            break
        line = data[pos:nl]
        pos = nl + 1
        if not line.strip():
            continue
        rec = _parse_line(line)
        if rec is None:
            bad_pending.append(lineno)
            warnings.append(f"{path}: line {lineno} is not a valid result; ignored")
            continue
        records.append(rec)
        good_end = pos
        bad_pending.clear()
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
        warnings.append(f"{path}: cut {len(data) - good_end} bytes of torn/invalid tail")
    return records, warnings


def _parse_line(line: bytes) -> dict | None:
    try:
        rec = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("key"), str) or "status" not in rec:
        return None
    return rec


def latest_by_key(records: list[dict]) -> dict[str, dict]:
    """The last record of each key (a rerun error replaced by its later result)."""
    out: dict[str, dict] = {}
    for r in records:
        out.pop(r["key"], None)
        out[r["key"]] = r
    return out


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
