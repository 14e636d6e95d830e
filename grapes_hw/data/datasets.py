"""Datasets: scikit-learn's 8x8 digits, Fashion-MNIST and MNIST.

``load_dataset(name, ...)`` returns a :class:`Dataset` of float32 images flattened to rows with
values in [0, 1] and int64 labels, split into train / validation / test.

* ``digits`` comes with scikit-learn (1,797 images of 8x8 pixels, values 0..16). It has no
  official test split, so a fixed stratified 75/25 split (``random_state=0``) is used that does
  not depend on ``seed``: every run is scored on the same 450 test images.
* ``fashion-mnist`` and ``mnist`` are read from the four canonical IDX gzip files
  (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
  ``t10k-labels-idx1-ubyte.gz``).

  With ``data_dir`` (the CLI's ``--data-dir``) the files are read from there and nowhere else:
  the dataset folder itself, or a parent with a ``<name>/`` folder (or torchvision's
  ``MNIST/raw`` / ``FashionMNIST/raw``). If that place lacks a file, or a file is truncated or
  damaged, loading stops with a :class:`~grapes_hw.errors.DataError` naming the file and what
  is wrong; nothing is downloaded and no other location is tried, so a run never uses data
  other than what the user pointed at. Without ``data_dir``, a directory holding all four is
  looked for, in this order:

  1. ``$GRAPES_HW_DATA/<name>``;
  2. the download cache ``$GRAPES_HW_CACHE/<name>``, by default ``~/.cache/grapes_hw/<name>``;
  3. ``/usr/share/datasets/<name>`` (Debian's ``dataset-fashion-mnist`` package installs
     Fashion-MNIST there).

  If none has them and downloading is allowed, the missing files are downloaded into the cache.

Every file read or downloaded is checked against the size and digests in :data:`CHECKSUMS`; a
missing, truncated or damaged file raises :class:`~grapes_hw.errors.DataError` naming the file.
Parsed arrays are cached in-process (keyed on path, size and mtime), so repeated loads in tests
and sweeps are cheap; callers always get fresh arrays and cannot corrupt the cache.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from grapes_hw.data.sources import (
    IDX_FILES,
    _check_name,
    _how_to_provide,
    _load_idx_readonly,
    _search,
    cache_dir,
    download_file,
)
from grapes_hw.errors import ConfigError, DataError

_N_CLASSES = 10


@dataclass
class Dataset:
    """A dataset split into train / validation / test, images flattened to rows.

    ``x_*`` are float32 ``(N, D)`` with values in [0, 1] (``D`` = pixels per image), ``y_*``
    int64 ``(N,)``. ``x_val`` is ``(0, D)`` when there is no validation split. ``source`` is the
    directory the files were read from, or ``"sklearn"``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    n_classes: int
    image_shape: tuple[int, int]
    source: str


def _check_train_subset(train_subset: int | None) -> None:
    if train_subset is None:
        return
    if isinstance(train_subset, bool) or not isinstance(train_subset, (int, np.integer)) \
            or train_subset < 1:
        raise ConfigError("train_subset",
                          f"got {train_subset!r}; must be a whole number >= 1 (or unset for all)")


def _check_val_fraction(val_fraction: float) -> float:
    try:
        v = float(val_fraction)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and 0.0 <= v < 1.0):
        raise ConfigError("val_fraction", f"got {val_fraction!r}; must be in [0, 1)")
    return v


# --------------------------------------------------------------------------- raw loaders


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn digits with the fixed stratified split, as read-only arrays."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    arrays = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    x_tr, x_te, y_tr, y_te = (np.ascontiguousarray(a) for a in arrays)
    for a in (x_tr, x_te, y_tr, y_te):
        a.flags.writeable = False
    return x_tr, y_tr, x_te, y_te


def _locate(name: str, data_dir: str | os.PathLike | None, download: bool,
            progress: bool) -> Path:
    """The folder with all four files of ``name``, downloading missing ones if allowed."""
    found, report = _search(name, data_dir)
    if found is not None:
        return found
    places = "Looked in:\n  - " + "\n  - ".join(report)
    if not download:
        raise DataError(f"{name}: dataset files not found and downloading is disabled "
                        f"(--no-download). {places}\n{_how_to_provide(name)}")
    dest = cache_dir(name)
    for filename in IDX_FILES.values():
        if (dest / filename).is_file():
            continue
        try:
            download_file(name, filename, dest_dir=dest, progress=progress)
        except DataError as e:
            raise DataError(f"{name}: dataset files not found and the download failed. "
                            f"{places}\nDownload: {e}\n{_how_to_provide(name)}") from e
    return dest


def _idx_arrays(name: str, folder: Path, data_dir=None) -> tuple[np.ndarray, ...]:
    """Verified (x_train, y_train, x_test, y_test) uint8 read-only arrays of ``folder``."""
    try:
        arrs = {role: _load_idx_readonly(folder / fn, dataset=name)
                for role, fn in IDX_FILES.items()}
    except DataError as e:
        if data_dir is None:
            raise
        raise DataError(f"--data-dir {Path(data_dir).expanduser()}: {e}\n  (no other "
                        "location is used when --data-dir is given)") from e
    for split in ("train", "test"):
        x, y = arrs[f"{split}_images"], arrs[f"{split}_labels"]
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.dtype != np.uint8:
            raise DataError(f"{folder}: {split} images {x.shape} and labels {y.shape} do not "
                            f"form a dataset")
        if y.size and int(y.max()) >= _N_CLASSES:
            raise DataError(f"{folder / IDX_FILES[f'{split}_labels']}: label {int(y.max())} "
                            f"outside 0..{_N_CLASSES - 1}")
    return arrs["train_images"], arrs["train_labels"], arrs["test_images"], arrs["test_labels"]


def _to_float(images: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
    """uint8 images (N, H, W) -> fresh float32 rows (N, H*W) in [0, 1]."""
    sel = images if idx is None else images[idx]
    rows = sel.reshape(sel.shape[0], math.prod(sel.shape[1:]))
    return np.divide(rows, np.float32(255), dtype=np.float32)


# --------------------------------------------------------------------------- public loader
def validation_size(n: int, val_fraction: float) -> int:
    """Samples of ``n`` held out by ``val_fraction`` (at least 1 when it is > 0); raises
    ConfigError when no training sample would be left."""
    if val_fraction <= 0:
        return 0
    n_val = max(1, round(val_fraction * n))
    if n_val >= n:
        raise ConfigError("val_fraction", f"got {val_fraction}; it leaves no training samples "
                                          f"out of {n}; use a smaller value in [0, 1) or a "
                                          "larger train_subset")
    return n_val


def load_dataset(name: str, *, data_dir: str | os.PathLike | None = None,
                 train_subset: int | None = None, val_fraction: float = 0.0, seed: int = 0,
                 download: bool = True, progress: bool = True) -> Dataset:
    """Load ``name`` (one of :data:`DATASETS`) as a :class:`Dataset`.

    ``train_subset``: keep a random subset of this many training samples (chosen with
    ``seed``). ``val_fraction``: hold out this fraction of the (subsetted) training set as a
    validation split (also by ``seed``). The test set never depends on ``seed``.
    ``data_dir``/``download``/``progress``: the folder to read the files from (only there:
    missing or damaged files there raise, see the module docstring), whether a missing
    dataset may be downloaded into the cache (never with ``data_dir``), and whether to show a
    download progress bar.

    Raises :class:`ConfigError` for bad options and :class:`DataError` for missing, truncated
    or damaged files.
    """
    _check_name(name)
    _check_train_subset(train_subset)
    val_fraction = _check_val_fraction(val_fraction)

    if name == "digits":
        x_tr, y_tr, x_te, y_te = _digits_arrays()
        image_shape, source = (8, 8), "sklearn"
    else:
        folder = _locate(name, data_dir, download, progress)
        x_tr, y_tr, x_te, y_te = _idx_arrays(name, folder, data_dir)
        image_shape, source = (int(x_tr.shape[1]), int(x_tr.shape[2])), str(folder)

    rng = np.random.default_rng(seed)
    n = int(y_tr.shape[0])
    idx = np.arange(n)
    if train_subset is not None:
        if train_subset > n:
            raise ConfigError("train_subset", f"got {train_subset}; the {name} training set "
                                                f"has {n} samples, so allowed values are 1..{n}")
        idx = np.sort(rng.choice(n, size=int(train_subset), replace=False))
    val_idx = idx[:0]
    if val_fraction > 0:
        n_val = validation_size(idx.size, val_fraction)
        perm = rng.permutation(idx.size)
        val_idx, idx = np.sort(idx[perm[:n_val]]), np.sort(idx[perm[n_val:]])

    def take_x(x: np.ndarray, i: np.ndarray | None) -> np.ndarray:
        if x.dtype == np.uint8:
            return _to_float(x, i)
        return np.array(x if i is None else x[i], dtype=np.float32)  # always a copy

    full = train_subset is None and val_fraction == 0
    return Dataset(
        name=name,
        x_train=take_x(x_tr, None if full else idx),
        y_train=np.array(y_tr if full else y_tr[idx], dtype=np.int64),
        x_test=take_x(x_te, None),
        y_test=np.array(y_te, dtype=np.int64),
        x_val=take_x(x_tr, val_idx),
        y_val=np.array(y_tr[val_idx], dtype=np.int64),
        n_classes=_N_CLASSES,
        image_shape=image_shape,
        source=source,
    )


__all__ = ["Dataset", "load_dataset"]
