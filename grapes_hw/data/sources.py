"""Where the datasets' files come from: the known datasets and their sizes, checksums of
every accepted file variant, IDX parsing, search of data folders and downloading.

Over 400 lines: the checksum table of every accepted file variant, IDX parsing, the
search of data folders and the download each verify the same files.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import math
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from grapes_hw.errors import ConfigError, DataError

DATASETS: tuple[str, ...] = ("digits", "fashion-mnist", "mnist")
TRAIN_SIZES = {"digits": 1347, "fashion-mnist": 60000, "mnist": 60000}
"""Training-set sizes (digits: the fixed 75 % split), so configs can be checked before loading."""
"""Names accepted by :func:`load_dataset` (and the CLI's ``--dataset``)."""

IDX_DATASETS: tuple[str, ...] = ("fashion-mnist", "mnist")
"""The datasets stored as IDX gzip files."""

IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
"""Role -> canonical file name, the same for MNIST and Fashion-MNIST."""

MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}
"""Download base URLs, tried in order; the file name is appended."""

HOMEPAGES: dict[str, str] = {
    "mnist": "https://yann.lecun.com/exdb/mnist/",
    "fashion-mnist": "https://github.com/zalandoresearch/fashion-mnist",
}

SYSTEM_DATA_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets"),)
"""System-wide dataset roots searched last (``<root>/<name>``)."""

DOWNLOAD_TIMEOUT_S: float = 10.0
"""Socket timeout of one download attempt; short, so offline machines fail fast."""

_TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileVariant:
    """One known byte-exact copy of a dataset file.

    A file matches when its size and every digest given here are equal. ``md5`` is the digest
    the dataset authors publish; ``sha256`` is stronger and preferred where known.
    """

    origin: str
    size: int
    sha256: str | None = None
    md5: str | None = None

    def describe(self) -> str:
        """The expected digests as text: ``sha256 ..., md5 ... (SIZE bytes, ORIGIN)``."""
        parts = [f"{alg} {d}" for alg, d in (("sha256", self.sha256), ("md5", self.md5)) if d]
        return f"{', '.join(parts)} ({self.size} bytes, {self.origin})"


# How these were verified:
# * MNIST t10k-*: SHA-256 from /work/shared/data/mnist/SHA256SUMS, and md5/sha256/size
#   recomputed from the real files; md5 equals the official one.
# * MNIST train-*: the official md5; the SHA-256 and sizes are the values published by
#   torchvision/TFDS and many independent loaders (their t10k values match the real files here).
# * Fashion-MNIST upstream: md5 and sizes from the zalandoresearch/fashion-mnist README. Debian's
#   package ships the same deflate streams with the gzip header normalised (file name dropped,
#   mtime set), so its .gz bytes differ. Re-inserting the original header (FNAME, mtime
#   1504176606 / 1504176627) into the Debian files reproduces the four upstream md5s exactly; the
#   SHA-256s of those reconstructions equal the ones published by TFDS. The Debian variant's
#   digests were computed from /usr/share/datasets/fashion-mnist (dataset-fashion-mnist
#   0.0~git20200523.55506a9-1). Both copies decompress to identical IDX bytes.
_UPSTREAM = "official"
_DEBIAN = "Debian dataset-fashion-mnist"

CHECKSUMS: dict[str, dict[str, tuple[FileVariant, ...]]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": (
            FileVariant(_UPSTREAM, 9912422,
                        sha256="440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                        md5="f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        ),
        "train-labels-idx1-ubyte.gz": (
            FileVariant(_UPSTREAM, 28881,
                        sha256="3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                        md5="d53e105ee54ea40749a09fcbcd1e9432"),
        ),
        "t10k-images-idx3-ubyte.gz": (
            FileVariant(_UPSTREAM, 1648877,
                        sha256="8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                        md5="9fb629c4189551a2d022fa330f9573f3"),
        ),
        "t10k-labels-idx1-ubyte.gz": (
            FileVariant(_UPSTREAM, 4542,
                        sha256="f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                        md5="ec29112dd5afa0611ce80d1b7f02629c"),
        ),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": (
            FileVariant(_UPSTREAM, 26421880,
                        sha256="3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                        md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            FileVariant(_DEBIAN, 26421856,
                        sha256="b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
                        md5="cf8536b0aa1a6ac5fa3f23001093305c"),
        ),
        "train-labels-idx1-ubyte.gz": (
            FileVariant(_UPSTREAM, 29515,
                        sha256="a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                        md5="25c81989df183df01b3e8a0aad5dffbe"),
            FileVariant(_DEBIAN, 29491,
                        sha256="0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
                        md5="10bea18fdb374794d4bb42e356e600c9"),
        ),
        "t10k-images-idx3-ubyte.gz": (
            FileVariant(_UPSTREAM, 4422102,
                        sha256="346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                        md5="bef4ecab320f06d8554ea6380940ec79"),
            FileVariant(_DEBIAN, 4422079,
                        sha256="cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
                        md5="f78720b4224f21cce2f2ccf2d7a94c9a"),
        ),
        "t10k-labels-idx1-ubyte.gz": (
            FileVariant(_UPSTREAM, 5148,
                        sha256="67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                        md5="bb300cfdad3c16e7a12a480ee83cd310"),
            FileVariant(_DEBIAN, 5125,
                        sha256="8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
                        md5="0d30e22e447f3c33dab9ed536400ac01"),
        ),
    },
}
"""Dataset -> file name -> accepted byte-exact copies."""


# --------------------------------------------------------------------------- option checks


def _check_name(name: str, allowed: Sequence[str] = DATASETS) -> None:
    if name not in allowed:
        raise ConfigError("dataset", f"got {name!r}; allowed values: {', '.join(allowed)}")


# --------------------------------------------------------------------------- checksums


@dataclass(frozen=True)
class _Digest:
    size: int
    sha256: str
    md5: str

    def matches(self, v: FileVariant) -> bool:
        return (self.size == v.size and (v.sha256 is None or v.sha256 == self.sha256)
                and (v.md5 is None or v.md5 == self.md5))


def _digest_bytes(data: bytes) -> _Digest:
    return _Digest(len(data), hashlib.sha256(data).hexdigest(),
                   hashlib.md5(data, usedforsecurity=False).hexdigest())


def _known_variants(filename: str, dataset: str | None) -> tuple[FileVariant, ...]:
    """Accepted copies of ``filename``: of ``dataset``, or of any dataset when None."""
    names = [dataset] if dataset is not None else list(CHECKSUMS)
    out: list[FileVariant] = []
    for ds in names:
        out.extend(CHECKSUMS.get(ds, {}).get(filename, ()))
    return tuple(out)


def _verify(label: str, got: _Digest, variants: Sequence[FileVariant]) -> None:
    """Raise DataError unless ``got`` matches one of ``variants`` (no-op when none known)."""
    if not variants or any(got.matches(v) for v in variants):
        return
    expected = "; ".join(v.describe() for v in variants)
    sizes = sorted({v.size for v in variants})
    if got.size < min(sizes):
        problem = (f"is truncated: {got.size} bytes, expected "
                   f"{' or '.join(str(s) for s in sizes)} bytes")
    elif got.size not in sizes:
        problem = (f"has the wrong size: {got.size} bytes, expected "
                   f"{' or '.join(str(s) for s in sizes)} bytes")
    else:
        problem = "fails its checksum"
    raise DataError(
        f"{label} {problem}.\n  expected: {expected}\n"
        f"  got:      sha256 {got.sha256}, md5 {got.md5} ({got.size} bytes)\n"
        "  The file is damaged or not the official one: delete it and download it again "
        "(or reinstall the package that provided it).")


# --------------------------------------------------------------------------- IDX parsing

_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _decompress(label: str, raw: bytes) -> bytes:
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError as e:
        raise DataError(f"{label} is truncated: the gzip stream ends early ({len(raw)} bytes "
                        f"read; {e})") from e
    except (OSError, zlib.error) as e:
        raise DataError(f"{label} is not a valid gzip file ({e})") from e


def _parse_idx(label: str, buf: bytes) -> np.ndarray:
    """Parse IDX bytes (already decompressed) into a read-only array in native byte order."""
    if len(buf) < 4:
        raise DataError(f"{label} is truncated: {len(buf)} bytes, too short for an IDX header")
    if buf[0] != 0 or buf[1] != 0 or buf[2] not in _IDX_DTYPES:
        raise DataError(f"{label} is not an IDX file (magic bytes {buf[:4].hex()})")
    dtype = _IDX_DTYPES[buf[2]]
    ndim = buf[3]
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{label} is truncated: {len(buf)} bytes, shorter than its "
                        f"{header}-byte IDX header")
    shape = tuple(int(d) for d in np.frombuffer(buf, ">u4", count=ndim, offset=4))
    count = math.prod(shape)
    need = count * dtype.itemsize
    have = len(buf) - header
    if have < need:
        raise DataError(f"{label} is truncated: its header declares shape {shape} "
                        f"({need} data bytes) but only {have} data bytes follow")
    if have > need:
        raise DataError(f"{label} has the wrong size: its header declares shape {shape} "
                        f"({need} data bytes) but {have} data bytes follow")
    arr = np.frombuffer(buf, dtype, count=count, offset=header).reshape(shape)
    if dtype.byteorder == ">" and sys.byteorder == "little":
        arr = arr.astype(dtype.newbyteorder("="))
    arr.flags.writeable = False
    return arr


@functools.lru_cache(maxsize=32)
def _load_idx_cached(path: str, dataset: str | None, verify: bool, size: int,
                     mtime_ns: int) -> np.ndarray:
    """Read, verify and parse one IDX file; cached on (path, options, size, mtime)."""
    p = Path(path)
    label = str(p)
    try:
        raw = p.read_bytes()
    except FileNotFoundError as e:
        raise DataError(f"{label} does not exist") from e
    except OSError as e:
        raise DataError(f"{label} cannot be read: {e}") from e
    if verify:
        _verify(label, _digest_bytes(raw), _known_variants(p.name, dataset))
    return _parse_idx(label, _decompress(label, raw))


def _load_idx_readonly(path: Path, *, dataset: str | None = None,
                       verify: bool = True) -> np.ndarray:
    try:
        st = path.stat()
    except FileNotFoundError as e:
        raise DataError(f"{path} does not exist") from e
    except OSError as e:
        raise DataError(f"{path} cannot be read: {e}") from e
    return _load_idx_cached(str(path.resolve()), dataset, verify, st.st_size, st.st_mtime_ns)


def load_idx(path: str | os.PathLike, *, dataset: str | None = None,
             verify: bool = True) -> np.ndarray:
    """Parse one IDX file (gzip-compressed or not) into a numpy array.

    The header (magic, element type, dimensions) is validated against the file size; a short
    or over-long file raises :class:`DataError`. When ``verify`` is true and the file has a
    canonical name (e.g. ``t10k-images-idx3-ubyte.gz``), its bytes must match a known copy in
    :data:`CHECKSUMS` -- of ``dataset`` if given, else of any dataset. Returns a fresh, writable
    array in native byte order (uint8 for images and labels).
    """
    if dataset is not None:
        _check_name(dataset, IDX_DATASETS)
    return _load_idx_readonly(Path(path), dataset=dataset, verify=verify).copy()


# --------------------------------------------------------------------------- locating files


def cache_dir(name: str | None = None) -> Path:
    """The download cache: ``$GRAPES_HW_CACHE`` or ``~/.cache/grapes_hw`` (``/<name>`` if given)."""
    env = os.environ.get("GRAPES_HW_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "grapes_hw"
    return root / name if name else root


def _data_dir_candidates(name: str, data_dir: str | os.PathLike) -> list[Path]:
    """Where in a user-named ``data_dir`` the files of ``name`` may be: the folder itself,
    ``<data_dir>/<name>`` or torchvision's ``<data_dir>/{MNIST,FashionMNIST}/raw``."""
    d = Path(data_dir).expanduser()
    return [d, d / name, d / _TORCHVISION_FOLDERS[name] / "raw"]


def _how_to_fill(name: str) -> str:
    return (f"The {name} files are {', '.join(IDX_FILES.values())}, from "
            f"{' or '.join(MIRRORS[name])} (see {HOMEPAGES[name]}). Without --data-dir they are "
            f"looked for in $GRAPES_HW_DATA/{name}, the download cache and the system folder, "
            f"and downloaded if none has them.")


def _in_data_dir(name: str, data_dir: str | os.PathLike) -> Path:
    """The folder in ``data_dir`` that holds ``name``'s files, or DataError saying why not.

    The first candidate holding any of the four files is the one meant; it must hold all
    four. No other location is ever substituted for a directory the user named."""
    d = Path(data_dir).expanduser()
    if not d.is_dir():
        raise DataError(f"--data-dir {d}: " + ("not a directory" if d.exists()
                                               else "no such directory")
                        + f"; it should hold the {name} files {', '.join(IDX_FILES.values())}")
    for cand in _data_dir_candidates(name, data_dir):
        if not cand.is_dir():
            continue
        missing = _missing_files(cand)
        if not missing:
            return cand
        if len(missing) < len(IDX_FILES):
            raise DataError(
                f"--data-dir {d}: {name} is incomplete in {cand}: missing "
                + ", ".join(str(cand / f) for f in missing)
                + ". Add the missing files there (no other location is used when --data-dir "
                  "is given).\n" + _how_to_fill(name))
    looked = ", ".join(str(c) for c in _data_dir_candidates(name, data_dir))
    raise DataError(f"--data-dir {d}: no {name} files there (looked in {looked} for "
                    f"{', '.join(IDX_FILES.values())}). No other location is used when "
                    f"--data-dir is given.\n" + _how_to_fill(name))


def _candidates(name: str) -> list[tuple[Path | None, str]]:
    """Places to look for ``name`` without a ``data_dir``, in order, as (directory or None,
    how it was chosen)."""
    out: list[tuple[Path | None, str]] = []
    env = os.environ.get("GRAPES_HW_DATA")
    out.append((Path(env).expanduser() / name if env else None, "$GRAPES_HW_DATA/<name>"))
    out.append((cache_dir(name), "download cache"))
    out += [(root / name, "system") for root in SYSTEM_DATA_DIRS]
    return out


def _missing_files(d: Path) -> list[str]:
    return [f for f in IDX_FILES.values() if not (d / f).is_file()]


def _search(name: str, data_dir: str | os.PathLike | None) -> tuple[Path | None, list[str]]:
    """First directory holding all four files, and a report line per place looked at. With
    ``data_dir``, that directory or DataError (see :func:`_in_data_dir`)."""
    if data_dir is not None:
        return _in_data_dir(name, data_dir), []
    report: list[str] = []
    seen: set[Path] = set()
    for d, how in _candidates(name):
        if d is None:
            report.append(f"{how}: GRAPES_HW_DATA is not set")
            continue
        if d in seen:
            continue
        seen.add(d)
        if not d.is_dir():
            report.append(f"{d} ({how}): no such directory")
            continue
        missing = _missing_files(d)
        if not missing:
            return d, report
        report.append(f"{d} ({how}): missing {', '.join(missing)}")
    return None, report


def _how_to_provide(name: str) -> str:
    files = ", ".join(IDX_FILES.values())
    urls = " or ".join(MIRRORS[name])
    return (f"To provide {name}, put the four files {files} (from {urls}; see "
            f"{HOMEPAGES[name]}) into one folder and pass it with --data-dir DIR (data_dir=...), "
            f"or put them in $GRAPES_HW_DATA/{name} or {cache_dir(name)}"
            + (", or install Debian's package dataset-fashion-mnist"
               if name == "fashion-mnist" else "") + ".")


def find_dataset_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The first directory holding all four IDX files of ``name``.

    With ``data_dir``: in it (itself, ``<data_dir>/<name>``, ``<data_dir>/MNIST/raw`` or
    ``<data_dir>/FashionMNIST/raw``) and nowhere else; a missing or incomplete set raises
    :class:`DataError` naming the missing files. Without: ``$GRAPES_HW_DATA/<name>``,
    :func:`cache_dir` and ``/usr/share/datasets/<name>``; :class:`DataError` lists every place
    looked at. Files are not verified here; that happens when they are read.
    """
    _check_name(name)
    if name not in IDX_DATASETS:
        raise ConfigError("dataset", f"{name!r} comes with scikit-learn and has no dataset "
                                       f"folder; datasets read from files: "
                                       f"{', '.join(IDX_DATASETS)}")
    found, report = _search(name, data_dir)
    if found is None:
        raise DataError(f"{name}: dataset files not found. Looked in:\n  - "
                        + "\n  - ".join(report) + "\n" + _how_to_provide(name))
    return found


# --------------------------------------------------------------------------- downloading


def _progress_bar(total: int | None, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not (enabled and sys.stderr.isatty()), leave=False)


def _fetch(url: str, dest: Path, filename: str, variants: Sequence[FileVariant],
           progress: bool) -> None:
    """Download ``url`` to a temp file next to ``dest``, verify, then rename atomically."""
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{filename}.", suffix=".part")
    tmp = Path(tmp_name)
    done = False
    try:
        sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
        req = urllib.request.Request(url, headers={"User-Agent": "grapes_hw"})
        with os.fdopen(fd, "wb") as out, \
                urllib.request.urlopen(req, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            length = resp.headers.get("Content-Length") if resp.headers is not None else None
            total = int(length) if length and str(length).isdigit() else None
            with _progress_bar(total, filename, progress) as bar:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    sha.update(chunk)
                    md5.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
        _verify(f"{filename} downloaded from {url}", _Digest(size, sha.hexdigest(),
                                                             md5.hexdigest()), variants)
        os.replace(tmp, dest)
        done = True
    finally:
        if not done:
            tmp.unlink(missing_ok=True)


def download_file(name: str, filename: str, *, dest_dir: str | os.PathLike | None = None,
                  progress: bool = True) -> Path:
    """Download one canonical file of ``name`` into ``dest_dir`` (default :func:`cache_dir`).

    Mirrors in :data:`MIRRORS` are tried in order with a short timeout. The file is written to a
    temporary name, checked against :data:`CHECKSUMS` (deleted on mismatch) and renamed into
    place atomically. Raises :class:`DataError` when no mirror gives a verified copy.
    """
    _check_name(name, IDX_DATASETS)
    variants = CHECKSUMS[name].get(filename)
    if not variants:
        raise DataError(f"{filename} is not a file of {name}; files: "
                        f"{', '.join(IDX_FILES.values())}")
    dest_dir = Path(dest_dir) if dest_dir is not None else cache_dir(name)
    created = not dest_dir.exists()
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the download folder {dest_dir}: {e}") from e
    dest = dest_dir / filename
    failures: list[str] = []
    for base in MIRRORS[name]:
        url = base + filename
        try:
            _fetch(url, dest, filename, variants, progress)
            return dest
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            failures.append(f"{url}: {reason}")
        except DataError as e:
            failures.append(str(e))
    if created:
        try:
            dest_dir.rmdir()  # leave no empty folder behind (fails harmlessly if not empty)
        except OSError:
            pass
    raise DataError(f"could not download {filename} of {name}:\n  - "
                    + "\n  - ".join(failures))


__all__ = ["CHECKSUMS", "DATASETS", "IDX_FILES", "MIRRORS", "FileVariant", "cache_dir",
           "download_file", "find_dataset_dir", "load_idx"]
