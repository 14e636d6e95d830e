"""Shared fixtures: small hand-made networks on the float backend."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
# One intra-op thread: the networks under test are small, and on a 2-core machine shared with
# sweep workers or numba threads, OpenMP spin-waiting made tiny matmuls ~100x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

from grapes_hw.backends.float_backend import FloatBackend, FloatParams  # noqa: E402
from grapes_hw.models.mlp import HWLinear, Network  # noqa: E402


def call(capsys, *args):
    """The CLI's ``main`` in-process: returns (exit code, stderr); argparse errors, which
    raise SystemExit, give their exit code too."""
    from grapes_hw.cli.main import main

    try:
        rc = main(list(args))
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def assert_follows_torch(learner, model, ref, batches, lr, w0) -> None:
    """``learner`` and the torch ``model`` with optimizer ``ref`` take the same steps on
    ``batches``: afterwards every layer's weights match (float64 tolerances), and the first
    layer moved away from ``w0`` (so the comparison is not vacuous)."""
    for x, y in batches:
        learner.step(x, y, lr)
        ref.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        ref.step()
    net = learner.net
    lins = [m for m in model if isinstance(m, torch.nn.Linear)]
    for layer, lin in zip(net.layers, lins, strict=True):
        torch.testing.assert_close(layer.backend.read(), lin.weight.detach(), rtol=1e-9,
                                   atol=1e-11)
    assert not torch.allclose(net.layers[0].backend.read(), w0)


def make_net(weights: list[torch.Tensor], activation: str = "relu", bias: bool = False,
             dtype: str = "float64") -> Network:
    layers = []
    for w in weights:
        b = FloatBackend(tuple(w.shape), FloatParams(dtype=dtype))
        b.program(w)
        layers.append(HWLinear(b, bias=bias))
    return Network(layers, activation)


@pytest.fixture
def small_weights() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    shapes = [(7, 5), (6, 7), (4, 6)]
    return [torch.randn(s, generator=g, dtype=torch.float64) * 0.7 for s in shapes]


def _fashion_mnist_missing() -> str:
    """Why the Fashion-MNIST files cannot be used here ("" when they can)."""
    from grapes_hw.data.sources import find_dataset_dir
    from grapes_hw.errors import DataError

    try:
        find_dataset_dir("fashion-mnist")
    except DataError as e:
        return str(e).splitlines()[0]
    return ""


needs_fashion_mnist = pytest.mark.skipif(
    bool(_fashion_mnist_missing()),
    reason=f"Fashion-MNIST not available ({_fashion_mnist_missing() or 'found'}); install "
           "Debian's dataset-fashion-mnist or put the files in ~/.cache/grapes_hw/fashion-mnist")
"""For tests that read the real Fashion-MNIST files: skipped, with the reason, without them."""

