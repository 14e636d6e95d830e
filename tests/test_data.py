"""Tests of grapes_hw.data.datasets: IDX parsing, checksums, search order, downloads and splits.

The real MNIST test set is read from the shared data folder next to the repository; the full
Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package. The network is never used:
an autouse fixture makes any unpatched ``urlopen`` call fail the test.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_fashion_mnist

from grapes_hw.data import datasets, sources
from grapes_hw.errors import ConfigError, DataError

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
T10K_IMAGES = "t10k-images-idx3-ubyte.gz"
T10K_LABELS = "t10k-labels-idx1-ubyte.gz"
TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

needs_mnist = pytest.mark.skipif(not (SHARED_MNIST / T10K_IMAGES).is_file(),
                                 reason=f"real MNIST test set not at {SHARED_MNIST}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Private download cache, no $GRAPES_HW_DATA, and no real network access."""
    monkeypatch.setenv("GRAPES_HW_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GRAPES_HW_DATA", raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to use the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


class FakeResponse(io.BytesIO):
    """What urlopen returns: a readable body with headers, usable as a context manager."""

    def __init__(self, body: bytes):
        super().__init__(body)
        self.headers = {"Content-Length": str(len(body))}


def serve(monkeypatch, answer):
    """Patch urlopen; ``answer(url)`` gives the body bytes or an exception. Returns URL log."""
    calls: list[str] = []

    def fake_urlopen(req, timeout=None):
        url = req.full_url if isinstance(req, urllib.request.Request) else str(req)
        calls.append(url)
        assert timeout is not None and timeout <= 30, "downloads need a short timeout"
        result = answer(url)
        if isinstance(result, BaseException):
            raise result
        return FakeResponse(result)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return calls


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


# --------------------------------------------------------------------------- real MNIST test set


@needs_mnist
def test_mnist_test_files_match_shared_sha256sums_and_table():
    listed = dict(line.split()[::-1] for line in
                  (SHARED_MNIST / "SHA256SUMS").read_text().splitlines() if line.strip())
    assert set(listed) == {T10K_IMAGES, T10K_LABELS}
    for name, digest in listed.items():
        assert sha256(SHARED_MNIST / name) == digest
        (variant,) = sources.CHECKSUMS["mnist"][name]
        assert variant.sha256 == digest
        assert variant.size == (SHARED_MNIST / name).stat().st_size
        assert variant.md5 == hashlib.md5((SHARED_MNIST / name).read_bytes()).hexdigest()


@needs_mnist
def test_load_idx_real_mnist_test_set():
    images = sources.load_idx(SHARED_MNIST / T10K_IMAGES, dataset="mnist")
    labels = sources.load_idx(SHARED_MNIST / T10K_LABELS, dataset="mnist")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == MNIST_TEST_COUNTS
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert images.min() == 0 and images.max() == 255
    # Known statistics (a mis-offset or mis-shaped parse would not give these): mean pixel
    # 0.1325 of full scale, the top row of every image blank, the first image (a 7) sums 18454.
    assert images.mean() / 255 == pytest.approx(0.13251, abs=1e-4)
    assert images[:, 0, :].max() == 0 and int(images[0].sum()) == 18454


@needs_mnist
def test_load_idx_returns_independent_arrays():
    a = sources.load_idx(SHARED_MNIST / T10K_LABELS)
    a[:] = 0
    b = sources.load_idx(SHARED_MNIST / T10K_LABELS)
    assert np.bincount(b, minlength=10).tolist() == MNIST_TEST_COUNTS


@needs_mnist
def test_truncated_file_raises(tmp_path):
    raw = (SHARED_MNIST / T10K_IMAGES).read_bytes()
    bad = tmp_path / T10K_IMAGES
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="truncated") as e:
        sources.load_idx(bad, dataset="mnist")
    assert str(bad) in str(e.value) and str(len(raw)) in str(e.value)
    # Without the checksum the gzip stream itself is found to end early.
    with pytest.raises(DataError, match="truncated"):
        sources.load_idx(bad, verify=False)


def test_truncated_uncompressed_idx_raises(tmp_path):
    header = bytes([0, 0, 0x08, 3]) + np.array([5, 2, 2], ">u4").tobytes()
    good = tmp_path / "good.idx"
    good.write_bytes(header + bytes(range(20)))
    assert sources.load_idx(good).tolist() == np.arange(20).reshape(5, 2, 2).tolist()
    short = tmp_path / "short.idx"
    short.write_bytes(header + bytes(19))
    with pytest.raises(DataError, match=r"truncated.*\(5, 2, 2\)"):
        sources.load_idx(short)
    long = tmp_path / "long.idx"
    long.write_bytes(header + bytes(21))
    with pytest.raises(DataError, match="wrong size"):
        sources.load_idx(long)
    notidx = tmp_path / "x.idx"
    notidx.write_bytes(b"PK\x03\x04" + bytes(10))
    with pytest.raises(DataError, match="not an IDX file"):
        sources.load_idx(notidx)


def test_big_endian_idx_types_are_decoded(tmp_path):
    values = np.array([[1.5, -2.0], [3.25, 1e6]], ">f4")
    p = tmp_path / "f.idx.gz"
    p.write_bytes(gzip.compress(bytes([0, 0, 0x0D, 2]) + np.array([2, 2], ">u4").tobytes()
                                + values.tobytes()))
    out = sources.load_idx(p)
    assert out.dtype == np.float32 and out.dtype.isnative
    assert out.tolist() == values.astype(np.float32).tolist()


@needs_mnist
def test_flipped_byte_fails_checksum(tmp_path):
    raw = bytearray((SHARED_MNIST / T10K_LABELS).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad = tmp_path / T10K_LABELS
    bad.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="checksum") as e:
        sources.load_idx(bad, dataset="mnist")
    msg = str(e.value)
    assert str(bad) in msg
    assert sources.CHECKSUMS["mnist"][T10K_LABELS][0].sha256 in msg  # expected
    assert hashlib.sha256(bytes(raw)).hexdigest() in msg  # got


@needs_mnist
def test_recompressed_copy_fails_checksum(tmp_path):
    """Same IDX content in a different (valid) gzip is not the official file."""
    content = gzip.decompress((SHARED_MNIST / T10K_LABELS).read_bytes())
    other = gzip.compress(content, compresslevel=1, mtime=0)
    bad = tmp_path / T10K_LABELS
    bad.write_bytes(other)
    with pytest.raises(DataError) as e:
        sources.load_idx(bad)
    assert hashlib.sha256(other).hexdigest() in str(e.value)
    assert sources.load_idx(bad, verify=False).shape == (10000,)  # it is a valid IDX file


# --------------------------------------------------------------------------- search order


def make_dataset_dir(path: Path, files: tuple[str, ...] | list[str] | None = None) -> Path:
    """A folder with empty files of the given names (default: all four)."""
    path.mkdir(parents=True, exist_ok=True)
    for f in sources.IDX_FILES.values() if files is None else files:
        (path / f).write_bytes(b"")
    return path


def test_search_order(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIRS", (tmp_path / "sys",))
    monkeypatch.setenv("GRAPES_HW_DATA", str(tmp_path / "env"))
    system = make_dataset_dir(tmp_path / "sys" / "mnist")
    assert sources.find_dataset_dir("mnist") == system
    cache = make_dataset_dir(tmp_path / "cache" / "mnist")
    assert sources.find_dataset_dir("mnist") == cache
    env = make_dataset_dir(tmp_path / "env" / "mnist")
    assert sources.find_dataset_dir("mnist") == env
    parent = tmp_path / "parent"
    inside = make_dataset_dir(parent / "mnist")
    assert sources.find_dataset_dir("mnist", data_dir=parent) == inside
    assert sources.find_dataset_dir("mnist", data_dir=str(inside)) == inside
    tv = make_dataset_dir(tmp_path / "tv" / "FashionMNIST" / "raw")
    assert sources.find_dataset_dir("fashion-mnist", data_dir=tmp_path / "tv") == tv


def test_incomplete_data_dir_is_refused_not_replaced(tmp_path, monkeypatch):
    """A --data-dir lacking files stops with the missing files named, although complete
    copies exist in $GRAPES_HW_DATA, the cache and the system folder."""
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIRS", (tmp_path / "sys",))
    monkeypatch.setenv("GRAPES_HW_DATA", str(tmp_path / "env"))
    for where in ("env", "cache", "sys"):
        make_dataset_dir(tmp_path / where / "mnist")
    partial = make_dataset_dir(tmp_path / "partial", [T10K_IMAGES, T10K_LABELS])
    with pytest.raises(DataError) as e:
        sources.find_dataset_dir("mnist", data_dir=partial)
    msg = str(e.value)
    assert f"--data-dir {partial}" in msg
    assert f"missing {partial / TRAIN_IMAGES}, {partial / 'train-labels-idx1-ubyte.gz'}" in msg
    for other in ("env", "cache", "sys"):
        assert str(tmp_path / other) not in msg
    cached = files_under(tmp_path / "cache")
    for download in (True, False):  # nothing downloaded either (urlopen would fail the test)
        with pytest.raises(DataError, match="incomplete"):
            datasets.load_dataset("mnist", data_dir=partial, download=download)
    assert files_under(tmp_path / "cache") == cached


def test_data_dir_without_the_files_or_missing_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPES_HW_DATA", str(tmp_path / "env"))
    make_dataset_dir(tmp_path / "env" / "mnist")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as e:
        sources.find_dataset_dir("mnist", data_dir=empty)
    msg = str(e.value)
    assert "no mnist files there" in msg
    for place in (empty, empty / "mnist", empty / "MNIST" / "raw"):
        assert str(place) in msg
    with pytest.raises(DataError, match="no such directory") as e:
        datasets.load_dataset("mnist", data_dir=tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)


def test_damaged_file_in_data_dir_is_named_not_replaced(tmp_path, monkeypatch):
    """Four files present, one a corrupt gzip: the error names it; a good copy elsewhere
    (the system folder) is not used instead."""
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIRS", (DEBIAN_FASHION.parent,))
    d = make_dataset_dir(tmp_path / "fm")
    (d / TRAIN_IMAGES).write_bytes(gzip.compress(b"\0" * 4000)[:60])  # truncated gzip
    with pytest.raises(DataError) as e:
        datasets.load_dataset("fashion-mnist", data_dir=d)
    msg = str(e.value)
    assert f"--data-dir {d}" in msg and str(d / TRAIN_IMAGES) in msg
    assert "truncated" in msg


def test_missing_dataset_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIRS", (tmp_path / "sys",))
    monkeypatch.setenv("GRAPES_HW_DATA", str(tmp_path / "env"))
    partial = make_dataset_dir(tmp_path / "env" / "mnist", [T10K_IMAGES, T10K_LABELS])
    with pytest.raises(DataError) as e:
        sources.find_dataset_dir("mnist")
    msg = str(e.value)
    for place in (partial, tmp_path / "cache" / "mnist", tmp_path / "sys" / "mnist"):
        assert str(place) in msg
    assert "missing train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz" in msg
    assert "--data-dir" in msg

    with pytest.raises(DataError, match="downloading is disabled") as e:
        datasets.load_dataset("mnist", download=False)
    assert str(tmp_path / "sys" / "mnist") in str(e.value)
    assert files_under(tmp_path / "cache") == []


# --------------------------------------------------------------------------- downloads


@needs_mnist
def test_download_writes_verified_file_into_cache(tmp_path, monkeypatch):
    body = (SHARED_MNIST / T10K_IMAGES).read_bytes()
    calls = serve(monkeypatch, lambda url: body)
    path = sources.download_file("mnist", T10K_IMAGES, progress=False)
    assert path == tmp_path / "cache" / "mnist" / T10K_IMAGES
    assert path.read_bytes() == body
    assert files_under(tmp_path / "cache") == [path]  # no temp file left
    assert calls == [sources.MIRRORS["mnist"][0] + T10K_IMAGES]
    assert sources.load_idx(path, dataset="mnist").shape == (10000, 28, 28)


@needs_mnist
def test_download_falls_back_to_second_mirror(tmp_path, monkeypatch):
    body = (SHARED_MNIST / T10K_LABELS).read_bytes()
    first, second = sources.MIRRORS["mnist"]
    calls = serve(monkeypatch, lambda url: urllib.error.URLError("refused")
                  if url.startswith(first) else body)
    path = sources.download_file("mnist", T10K_LABELS, progress=False)
    assert calls == [first + T10K_LABELS, second + T10K_LABELS]
    assert path.read_bytes() == body


def test_download_with_wrong_bytes_leaves_nothing(tmp_path, monkeypatch):
    body = gzip.compress(b"not mnist" * 100)
    calls = serve(monkeypatch, lambda url: body)
    with pytest.raises(DataError) as e:
        sources.download_file("mnist", T10K_LABELS, progress=False)
    msg = str(e.value)
    assert T10K_LABELS in msg
    assert hashlib.sha256(body).hexdigest() in msg
    assert sources.CHECKSUMS["mnist"][T10K_LABELS][0].sha256 in msg
    assert len(calls) == len(sources.MIRRORS["mnist"])
    assert not (tmp_path / "cache" / "mnist").exists()  # no file, no empty folder


def test_network_failure_gives_data_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIRS", (tmp_path / "sys",))
    calls = serve(monkeypatch, lambda url: urllib.error.URLError("Name or service not known"))
    with pytest.raises(DataError) as e:
        datasets.load_dataset("mnist", progress=False)
    msg = str(e.value)
    assert "Name or service not known" in msg
    assert str(tmp_path / "cache" / "mnist") in msg and str(tmp_path / "sys" / "mnist") in msg
    assert "--data-dir" in msg and TRAIN_IMAGES in msg
    assert calls == [m + TRAIN_IMAGES for m in sources.MIRRORS["mnist"]]  # stops at first file
    assert files_under(tmp_path / "cache") == []


@needs_mnist
def test_download_fetches_only_missing_files(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIRS", ())
    cache = tmp_path / "cache" / "mnist"
    cache.mkdir(parents=True)
    for f in (T10K_IMAGES, T10K_LABELS):
        shutil.copy(SHARED_MNIST / f, cache / f)
    calls = serve(monkeypatch, lambda url: TimeoutError("timed out"))
    with pytest.raises(DataError, match="timed out"):
        datasets.load_dataset("mnist", progress=False)
    assert all(T10K_IMAGES not in c and T10K_LABELS not in c for c in calls)
    assert sorted(p.name for p in files_under(cache)) == sorted([T10K_IMAGES, T10K_LABELS])


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(),
                    reason=f"needs Debian's dataset-fashion-mnist in {DEBIAN_FASHION}")
def test_fashion_mnist_end_to_end_download(tmp_path, monkeypatch):
    """Serve the (checksum-listed) Debian files over a fake network; load from the cache."""
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIRS", ())
    calls = serve(monkeypatch, lambda url: (DEBIAN_FASHION / url.rsplit("/", 1)[1]).read_bytes())
    ds = datasets.load_dataset("fashion-mnist", train_subset=100, progress=False)
    assert ds.source == str(tmp_path / "cache" / "fashion-mnist")
    assert len(calls) == 4 and ds.x_train.shape == (100, 784) and ds.x_test.shape == (10000, 784)
    datasets.load_dataset("fashion-mnist", train_subset=100, progress=False)
    assert len(calls) == 4  # found in the cache the second time


# --------------------------------------------------------------------------- digits


def test_digits_shapes_and_values():
    ds = datasets.load_dataset("digits")
    assert ds.source == "sklearn" and ds.image_shape == (8, 8) and ds.n_classes == 10
    assert ds.x_train.shape == (1347, 64) and ds.x_test.shape == (450, 64)
    assert ds.x_val.shape == (0, 64) and ds.y_val.shape == (0,)
    for x in (ds.x_train, ds.x_test):
        assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
        assert np.array_equal(x * 16, np.round(x * 16))  # pixels / 16
    for y in (ds.y_train, ds.y_test):
        assert y.dtype == np.int64
    test_counts = np.bincount(ds.y_test, minlength=10)
    all_counts = test_counts + np.bincount(ds.y_train, minlength=10)
    assert np.abs(test_counts - 0.25 * all_counts).max() <= 1  # stratified 25 %


def test_digits_test_split_is_fixed():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    a = datasets.load_dataset("digits", seed=0)
    datasets._digits_arrays.cache_clear()  # the split must not come from the in-process cache
    b = datasets.load_dataset("digits", seed=123, train_subset=200, val_fraction=0.25)
    assert np.array_equal(a.x_test, b.x_test) and np.array_equal(a.y_test, b.y_test)
    d = load_digits()
    _, x_test, _, y_test = train_test_split(d.data, d.target, test_size=0.25, random_state=0,
                                            stratify=d.target)
    assert np.array_equal(a.y_test, y_test) and np.allclose(a.x_test, x_test / 16)


def test_train_subset_size_and_reproducibility():
    a = datasets.load_dataset("digits", train_subset=300, seed=1)
    b = datasets.load_dataset("digits", train_subset=300, seed=1)
    c = datasets.load_dataset("digits", train_subset=300, seed=2)
    assert a.x_train.shape == (300, 64) and a.y_train.shape == (300,)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.x_train, c.x_train)


def test_val_split_partitions_the_subset():
    whole = datasets.load_dataset("digits", train_subset=400, seed=5)
    split = datasets.load_dataset("digits", train_subset=400, seed=5, val_fraction=0.25)
    assert split.x_train.shape == (300, 64) and split.x_val.shape == (100, 64)
    def rows(x, y):
        return sorted(r.tobytes() + bytes([int(c)]) for r, c in zip(x, y, strict=True))

    union = rows(np.concatenate([split.x_train, split.x_val]),
                 np.concatenate([split.y_train, split.y_val]))
    assert union == rows(whole.x_train, whole.y_train)  # train + val = the same subset
    full = datasets.load_dataset("digits", val_fraction=0.2, seed=0)
    assert full.x_train.shape[0] + full.x_val.shape[0] == 1347
    other = datasets.load_dataset("digits", val_fraction=0.2, seed=1)
    assert not np.array_equal(full.y_val, other.y_val)


def test_returned_arrays_do_not_share_the_cache():
    a = datasets.load_dataset("digits")
    a.x_train[:] = 7.0
    a.y_test[:] = 3
    b = datasets.load_dataset("digits")
    assert b.x_train.max() == 1.0 and len(set(b.y_test.tolist())) == 10


# --------------------------------------------------------------------------- Fashion-MNIST


@needs_fashion_mnist
def test_fashion_mnist_full_load():
    ds = datasets.load_dataset("fashion-mnist", progress=False)
    assert ds.x_train.shape == (60000, 784) and ds.x_test.shape == (10000, 784)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.image_shape == (28, 28) and ds.n_classes == 10
    assert 0.0 == ds.x_train.min() and ds.x_train.max() == 1.0
    assert np.bincount(ds.y_train, minlength=10).tolist() == [6000] * 10
    assert np.bincount(ds.y_test, minlength=10).tolist() == [1000] * 10
    assert Path(ds.source).name == "fashion-mnist"


@needs_fashion_mnist
def test_fashion_mnist_subset_and_val_sizes():
    ds = datasets.load_dataset("fashion-mnist", train_subset=1000, val_fraction=0.1, seed=3,
                           progress=False)
    assert ds.x_train.shape == (900, 784) and ds.x_val.shape == (100, 784)
    assert ds.x_test.shape == (10000, 784)


# --------------------------------------------------------------------------- option errors


def test_unknown_dataset_name():
    with pytest.raises(ConfigError) as e:
        datasets.load_dataset("cifar10")
    assert e.value.field == "dataset"
    for name in sources.DATASETS:
        assert name in e.value.message


@pytest.mark.parametrize("kwargs, field", [
    ({"train_subset": 0}, "train_subset"),
    ({"train_subset": 1348}, "train_subset"),
    ({"train_subset": 2.5}, "train_subset"),
    ({"val_fraction": 1.0}, "val_fraction"),
    ({"val_fraction": -0.1}, "val_fraction"),
    ({"val_fraction": float("nan")}, "val_fraction"),
    ({"train_subset": 1, "val_fraction": 0.5}, "val_fraction"),
])
def test_bad_options(kwargs, field):
    with pytest.raises(ConfigError) as e:
        datasets.load_dataset("digits", **kwargs)
    assert e.value.field == field


def test_subset_error_names_available_count():
    with pytest.raises(ConfigError, match="1347"):
        datasets.load_dataset("digits", train_subset=5000)
