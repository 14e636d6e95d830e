"""GRAPES factors on torch's OpenMP pool (``grapes_hw._omp``) and the learner's fused path.

The fused path must give the generic path's factors (to float rounding), whatever the thread
count, and must step aside wherever its assumptions do not hold.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grapes_hw import _omp
from grapes_hw._kernels import row_abs_sums
from grapes_hw.backends.float_backend import FloatBackend, FloatParams
from grapes_hw.credit import BP, DFA, FA
from grapes_hw.grapes import GrapesParameters, _modulation_torch
from grapes_hw.learning import Learner
from grapes_hw.network import HWLinear, Network, he_uniform
from grapes_hw.noise import NoiseParams, NoisyBackend
from grapes_hw.optim import SGD

TORCH_LIBGOMP = Path(torch.__file__).parent / "lib" / "libgomp.so.1"
needs_pool = pytest.mark.skipif(not _omp.available(),
                                reason="torch's libgomp is not loaded in this process")


def test_pool_is_found_where_torch_ships_libgomp():
    # The pinned CPU wheel on Linux ships torch/lib/libgomp.so.1: the fast path must be found
    # there (this is what CI and the README set-up install).
    if not (sys.platform.startswith("linux") and TORCH_LIBGOMP.exists()):
        pytest.skip("not a Linux torch wheel with its own libgomp")
    assert _omp.available()
    assert _omp._torch_libgomp() == os.path.realpath(TORCH_LIBGOMP) or \
        os.path.samefile(_omp._torch_libgomp(), TORCH_LIBGOMP)


def test_env_switch_turns_the_pool_off():
    code = ("import torch; from grapes_hw import _omp; torch.ones(4).sum(); "
            "print(_omp.available())")
    env = dict(os.environ, GRAPES_HW_TORCH_POOL="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"


@needs_pool
@pytest.mark.parametrize("shape", [(256, 784), (257, 33), (1, 5), (3, 1), (10, 256)])
@pytest.mark.parametrize("lower,bits", [(1.0, None), (None, None), (0.5, None), (1.0, 2),
                                        (None, 3)])
def test_row_modulation_matches_the_reference(shape, lower, bits):
    g = torch.Generator().manual_seed(shape[0] * 31 + shape[1])
    w = torch.randn(shape, generator=g) * 0.1
    levels = 0 if bits is None else (1 << bits) - 1
    rm = _omp.RowModulation(shape[0], lower, levels)
    m = rm(w)
    ref_imp = w.double().abs().sum(1)
    torch.testing.assert_close(rm.importance.double(), ref_imp, rtol=1e-6, atol=1e-6)
    serial = torch.empty(shape[0])
    row_abs_sums(w.numpy(), serial.numpy())
    assert torch.equal(rm.importance, serial)  # the same routine as the serial path
    ref = _modulation_torch(rm.importance.clone(), lower, bits)
    torch.testing.assert_close(m, ref, rtol=0, atol=0)
    if lower is not None:
        assert float(m.min()) >= lower and float(m.max()) == 2.0


@needs_pool
def test_row_modulation_is_independent_of_the_thread_count():
    w = torch.randn(301, 97, generator=torch.Generator().manual_seed(3))
    rm = _omp.RowModulation(301, 1.0, 0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        m1, i1 = rm(w), rm.importance.clone()
        torch.set_num_threads(2)
        m2, i2 = rm(w), rm.importance.clone()
        torch.set_num_threads(3)
        m3 = rm(w)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(i1, i2) and torch.equal(m1, m2) and torch.equal(m1, m3)


@needs_pool
def test_row_modulation_rejects_what_it_cannot_read():
    rm = _omp.RowModulation(4, 1.0, 0)
    for bad in (torch.zeros(5, 3), torch.zeros(4, 3, dtype=torch.float64),
                torch.zeros(3, 4).T, torch.zeros(4)):
        assert not rm.accepts(bad)
        with pytest.raises(ValueError, match="RowModulation"):
            rm(bad)
    # All-zero weights: m = 1 everywhere (no division by zero)
    assert torch.equal(rm(torch.zeros(4, 3)), torch.ones(4))


def _net(seed=0, sizes=(20, 24, 16, 12, 5), dropout=0.0, noisy=None, dtype="float32"):
    g = torch.Generator().manual_seed(seed)
    layers = []
    for i in range(len(sizes) - 1):
        b = FloatBackend((sizes[i + 1], sizes[i]), FloatParams(dtype=dtype))
        b.program(he_uniform(b.shape, g))
        if noisy is not None:
            b = NoisyBackend(b, noisy, seed=i)
        layers.append(HWLinear(b))
    return Network(layers, "relu", dropout=dropout, generator=g)


def _train(mode="propagating", credit=BP, steps=6, pool=True, **kw):
    net = _net(**kw)
    learner = Learner(net, credit(net), GrapesParameters(mode=mode), SGD())
    if not pool:
        learner._rowmod = False  # the generic path: abs_sums + modulation_factor
    g = torch.Generator().manual_seed(7)
    factors = []
    for _ in range(steps):
        x = torch.rand(16, net.layers[0].shape[1], generator=g,
                       dtype=torch.float64 if kw.get("dtype") == "float64" else torch.float32)
        y = torch.randint(0, net.layers[-1].shape[0], (16,), generator=g)
        learner.step(x, y, 0.2)
        factors.append([m.clone() for m in learner.last_factors])
    return learner, factors


@needs_pool
@pytest.mark.parametrize("credit", [BP, FA])
@pytest.mark.parametrize("mode", ["propagating", "local"])
def test_fused_learner_path_equals_the_generic_path(credit, mode):
    fast, f_fast = _train(mode, credit)
    slow, f_slow = _train(mode, credit, pool=False)
    assert isinstance(fast._rowmod, list)  # the fused path was taken
    # One row-sum routine serves both paths, so the trajectories agree bit for bit.
    for a_step, b_step in zip(f_fast, f_slow, strict=True):
        for a, b in zip(a_step, b_step, strict=True):
            assert torch.equal(a, b)
    for la, lb in zip(fast.net.layers, slow.net.layers, strict=True):
        assert torch.equal(la.backend.w, lb.backend.w)


@needs_pool
def test_weights_changed_after_the_forward_pass_are_seen():
    learner, _ = _train(steps=2)
    net = learner.net
    x = torch.rand(16, 20, generator=torch.Generator().manual_seed(1))
    learner._arm_fused()
    net.forward(x, train=True, cache=learner.cache)
    assert all(p is not None for p in learner._pending)
    w = net.layers[1].backend.w
    w[3].mul_(10.0)  # node 3 of layer 1 now dominates: the factors must follow
    m = learner.factors()
    ref = _modulation_torch(w.abs().sum(1), 1.0)
    torch.testing.assert_close(m[1], ref)
    assert float(m[1][3]) == 2.0 and float(m[1].min()) == 1.0


@pytest.mark.parametrize("kw,credit", [
    (dict(dropout=0.3), BP),                                          # keep masks
    (dict(), DFA),                                                    # column importance
    (dict(noisy=NoiseParams(read_sigma=0.05)), BP),                   # read() is noisy
    (dict(dtype="float64"), BP),                                      # not float32
])
def test_fused_path_steps_aside(kw, credit):
    learner, _ = _train(credit=credit, steps=2, **kw)
    assert learner.cache.after_mvm is None
    assert not learner._rowmod or all(p is None for p in learner._pending)


def test_noisy_backend_without_read_noise_reads_exactly():
    b = FloatBackend((3, 4))
    assert b.exact_read
    assert NoisyBackend(b, NoiseParams(write_sigma=0.1)).exact_read
    assert not NoisyBackend(b, NoiseParams(read_sigma=0.1)).exact_read


@needs_pool
def test_factors_wait_for_every_threads_row_sums():
    # Two long rows, one per thread: thread 0 must not form m before thread 1's sum is in
    # (without the barrier it reads the previous call's sum for row 1).
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rm = _omp.RowModulation(2, 1.0, 0)
        small = torch.full((2, 200_000), 0.001)
        for k in range(20):
            big_row = k % 2
            w = small.clone()
            w[big_row] = 1.0
            m = rm(w)
            assert float(m[big_row]) == 2.0 and float(m[1 - big_row]) == 1.0, k
    finally:
        torch.set_num_threads(before)


@needs_pool
def test_non_finite_weights_give_ones_on_the_pool_too():
    w = torch.ones(3, 4)
    w[1, 2] = float("nan")
    assert _omp.RowModulation(3, 1.0, 0)(w).tolist() == [1.0, 1.0, 1.0]
    w[1, 2] = float("inf")
    assert _omp.RowModulation(3, 1.0, 0)(w).tolist() == [1.0, 1.0, 1.0]


def test_compiling_the_pool_kernel_first_keeps_modulation_exact(tmp_path):
    # Regression: the pool kernel once had fastmath, which numba passed on to the
    # ``modulation`` it calls, and the fastmath build landed in modulation's on-disk cache;
    # later processes then lost the NaN check. Fresh cache, pool kernel compiled first.
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    first = "import torch; torch.ones(2).sum(); from grapes_hw import _omp"
    second = ("import torch; from grapes_hw.grapes import modulation_factor; "
              "print(modulation_factor(torch.tensor([1.0, float('nan'), 2.0])).tolist())")
    subprocess.run([sys.executable, "-c", first], env=env, check=True)
    out = subprocess.run([sys.executable, "-c", second], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[1.0, 1.0, 1.0]"


@needs_pool
@pytest.mark.parametrize("bits,rounding", [(8, "stochastic"), (8, "nearest"), (16, "stochastic"),
                                           (12, "nearest")])
def test_fixed_point_write_on_torch_threads_matches_numba_parallel(bits, rounding):
    from grapes_hw.backends.fixed_point import FixedParams, FixedPointBackend

    def run(pool: bool, threads: int, fused: bool = True):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            b = FixedPointBackend((200, 130), FixedParams(bits=bits, rounding=rounding), seed=5)
            b.program(torch.randn(200, 130, generator=torch.Generator().manual_seed(0)) * 0.1)
            if not pool:
                b._pool = False
            elif not fused:  # the pool without MKL's sgemm_: torch.mm, then the pooled write
                b._pool = b._torch_pool()[:3] + (False,)
            g = torch.Generator().manual_seed(1)
            for _ in range(4):
                b.update(torch.rand(32, 130, generator=g), torch.randn(32, 200, generator=g), 0.5)
            assert (b._pool not in (None, False)) == pool
            return b.q.clone(), b.w.clone(), b.pulses()
        finally:
            torch.set_num_threads(before)

    ref = run(pool=False, threads=2)
    for threads, fused in ((1, True), (2, True), (3, True), (2, False)):
        q, w, n = run(pool=True, threads=threads, fused=fused)
        assert torch.equal(q, ref[0]) and torch.equal(w, ref[1]) and n == ref[2]
    assert ref[2] > 0


@needs_pool
def test_fixed_point_update_fuses_the_product_and_takes_any_layout():
    from grapes_hw.backends.fixed_point import FixedParams, FixedPointBackend

    def make():
        b = FixedPointBackend((160, 120), FixedParams(bits=8, rounding="stochastic"), seed=2)
        b.program(torch.randn(160, 120, generator=torch.Generator().manual_seed(0)) * 0.1)
        return b

    g = torch.Generator().manual_seed(3)
    x = torch.rand(120, 16, generator=g).T          # non-contiguous (16, 120)
    d = torch.randn(160, 16, generator=g).T         # non-contiguous (16, 160)
    a, b = make(), make()
    a.update(x, d, 0.3)
    b.update(x.contiguous(), d.contiguous(), 0.3)
    assert torch.equal(a.q, b.q) and a.pulses() == b.pulses() > 0
    if sys.platform.startswith("linux") and torch.backends.mkl.is_available():
        assert a._pool[3], "MKL sgemm_ not found in torch: the product is not fused"
