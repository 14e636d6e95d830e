"""The crossbar study's pieces: layers split over several crossbar arrays (``tile_size``),
and the periphery device models (DAC/ADC bits, output noise, IR drop, array size).

Exact comparisons use FloatingPointRPUConfig (no IO non-idealities, deterministic updates);
noisy configurations are checked for their structure (number of arrays, each array's own
IO) and for learning.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("aihwkit") is None,
                                reason="aihwkit is not installed")

from grapes_hw.backends.analog.array import SplitAnalogBackend, make_analog  # noqa: E402
from grapes_hw.backends.analog.config import AnalogParams, build_rpu_config  # noqa: E402
from grapes_hw.backends.analog.tile import AnalogTileBackend  # noqa: E402
from grapes_hw.backends.registry import load_device_model  # noqa: E402
from grapes_hw.errors import ConfigError  # noqa: E402
from grapes_hw.training.config import TrainConfig  # noqa: E402
from grapes_hw.training.train import run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FP = "FloatingPointRPUConfig"
SHAPE = (7, 10)  # with tile_size 4: 2 x 3 arrays, ragged last blocks (3 rows, 2 columns)


def _data(n_out=7, n_in=10, batch=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_out, n_in, generator=g) * 0.2
    x = torch.rand(batch, n_in, generator=g)
    d = torch.randn(batch, n_out, generator=g)
    return w, x, d


def _pair(rpu_config=FP, tile_size=4, **kw):
    split = make_analog(SHAPE, AnalogParams(rpu_config=rpu_config, tile_size=tile_size, **kw), 0)
    whole = make_analog(SHAPE, AnalogParams(rpu_config=rpu_config, **kw), 0)
    return split, whole


def test_tile_size_builds_a_grid_of_arrays_only_when_the_layer_is_larger():
    split, whole = _pair()
    assert isinstance(split, SplitAnalogBackend) and isinstance(whole, AnalogTileBackend)
    assert split.n_tiles == 6
    assert [[t.shape for t in row] for row in split.tiles] == [
        [(4, 4), (4, 4), (4, 2)], [(3, 4), (3, 4), (3, 2)]]
    # A layer that fits one array keeps the plain (fast) single-tile backend.
    fits = make_analog(SHAPE, AnalogParams(rpu_config=FP, tile_size=10), 0)
    assert type(fits) is AnalogTileBackend


def test_tile_size_is_validated():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError):
            AnalogParams(rpu_config=FP, tile_size=bad).check()
    AnalogParams(rpu_config=FP, tile_size=128).check()


def test_split_float_tiles_match_the_unsplit_tile_and_float_matmul():
    w, x, d = _data()
    split, whole = _pair()
    for b in (split, whole):
        b.program(w)
    assert torch.allclose(split.stored(), w) and torch.allclose(split.read(), w)
    for name, ref in (("forward", x @ w.T), ("forward_inference", x @ w.T),
                      ("backward", d @ w)):
        out_s, out_w = getattr(split, name)(d if name == "backward" else x), \
            getattr(whole, name)(d if name == "backward" else x)
        assert torch.allclose(out_s, ref, atol=1e-5), name
        assert torch.allclose(out_s, out_w, atol=1e-5), name
    assert torch.allclose(split.abs_sums(1), w.abs().sum(1), atol=1e-5)
    assert torch.allclose(split.abs_sums(0), w.abs().sum(0), atol=1e-5)
    # Rank update: every array gets its slices of x and delta (W -= lr/B delta^T x).
    split.update(x, d, 0.1)
    whole.update(x, d, 0.1)
    expect = w - 0.1 / x.shape[0] * d.T @ x
    assert torch.allclose(split.stored(), expect, atol=1e-5)
    assert torch.allclose(split.stored(), whole.stored(), atol=1e-5)
    # Increment: each array its block of dw.
    dw = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)) * 0.01
    split.increment(dw)
    assert torch.allclose(split.stored(), expect + dw, atol=1e-5)


def test_split_pcm_counts_devices_and_pulses_over_all_arrays():
    w, x, d = _data()
    params = AnalogParams(rpu_config="PCMPreset", tile_size=4,
                          set={"mapping.weight_scaling_omega": 1.0})
    split = make_analog(SHAPE, params, 0)
    assert split.n_tiles == 6 and split.n_devices == 2
    m = split.memory()
    assert m.n_weights == 70 and m.device_count == 140
    split.program(w)
    split.update(x, d, 0.5)
    per_array = [t.pulses() for row in split.tiles for t in row]
    assert split.pulses() > 0
    assert abs(split.pulses() - sum(per_array)) <= len(per_array)  # (rounding per array)
    # The arrays are distinct tiles with their own device-to-device variation.
    seeds = {t.rpu_config.device.construction_seed for row in split.tiles for t in row}
    assert len(seeds) == 6


def test_each_array_quantizes_its_own_partial_sum():
    # With an 8-bit ADC, adding the arrays' quantized partial sums digitally differs from
    # one big array (one quantization of the whole sum): splitting is not a no-op.
    w, x, _ = _data(n_in=10)
    io = {"forward.out_noise": 0.0, "forward.out_res": 1 / 254, "forward.inp_res": -1,
          "mapping.weight_scaling_omega": 1.0}
    split, whole = _pair("PCMPreset", set=io)
    split.program(w)
    whole.program(w)
    ref = x @ w.T
    ys, yw = split.forward(x), whole.forward(x)
    assert ys.shape == yw.shape == ref.shape
    assert not torch.allclose(ys, yw, atol=1e-4)
    # Both are close to the float result (quantized, not broken).
    assert float((ys - ref).abs().mean()) < 0.2 * float(ref.abs().mean())
    assert float((yw - ref).abs().mean()) < 0.2 * float(ref.abs().mean())


def test_training_on_split_noisy_arrays_learns_digits(tmp_path, monkeypatch):
    # pcm-insitu-tile128 with arrays of 16 x 16: digits' 64 inputs -> 32 hidden -> 10 is
    # 2 x 4 arrays in the first layer and 1 x 2 in the second.
    import grapes_hw.backends.analog.array as analog

    text = (ROOT / "device_models" / "pcm-insitu-tile128.toml").read_text()
    assert "tile_size = 128" in text
    path = tmp_path / "pcm-insitu-tile16.toml"
    path.write_text(text.replace("tile_size = 128", "tile_size = 16").replace(
        'name = "pcm-insitu-tile128"', 'name = "pcm-insitu-tile16"'))
    built = []

    class Spy(analog.SplitAnalogBackend):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            built.append(self)

    monkeypatch.setattr(analog, "SplitAnalogBackend", Spy)
    r = run(TrainConfig.from_flat(dataset="digits", layers=(32,), epochs=3, lr=0.1, seed=0,
                        backend=str(path)))
    assert r["status"] == "ok"
    assert sorted(b.n_tiles for b in built) == [2, 8]
    assert all(isinstance(t.rpu_config, type(built[0].rpu_config))
               for b in built for row in b.tiles for t in row)
    # Chance is 0.1; unsplit pcm-insitu reaches about 0.33 after 2 epochs at lr 0.1 here
    # (in-situ PCM learns digits slowly), split about the same.
    assert r["best_test_acc"] > 0.2, r["best_test_acc"]
    losses = [e["train_loss"] for e in r["epochs"]]
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("name, path, value", [
    ("pcm-insitu-dac4", "forward.inp_res", 1 / 14),
    ("pcm-insitu-dac6", "forward.inp_res", 1 / 62),
    ("pcm-insitu-adc6", "forward.out_res", 1 / 62),
    ("pcm-insitu-adc8", "forward.out_res", 1 / 254),
    ("pcm-insitu-outnoise0", "forward.out_noise", 0.0),
    ("pcm-insitu-outnoise20", "forward.out_noise", 0.2),
    ("pcm-insitu-irdrop", "forward.ir_drop", 1.0),
])
def test_periphery_models_change_one_setting_of_the_recipe(name, path, value):
    base = build_rpu_config(load_device_model("pcm-insitu").params)
    cfg = build_rpu_config(load_device_model(name).params)
    obj, ref = cfg, base
    for part in path.split("."):
        obj, ref = getattr(obj, part), getattr(ref, part)
    assert obj == pytest.approx(value, rel=1e-6)
    assert ref != pytest.approx(value, rel=1e-6)  # the preset differs


def test_ir_drop_changes_the_forward_mvm():
    # The drop grows with the number of inputs on a line: 784 inputs (a 64-input array shows
    # almost none at ir_drop = 1).
    g = torch.Generator().manual_seed(0)
    w = (torch.rand(8, 784, generator=g) - 0.5) * 0.2
    x = torch.rand(4, 784, generator=g)
    models = {}
    for name in ("pcm-insitu", "pcm-insitu-irdrop"):
        params = load_device_model(name).params
        params.set = {**params.set, "forward.out_noise": 0.0}
        models[name] = b = AnalogTileBackend((8, 784), params, seed=0)
        b.program(w)
    plain, drop = models["pcm-insitu"], models["pcm-insitu-irdrop"]
    assert torch.equal(plain.stored(), drop.stored())  # same conductances ...
    y = plain.forward(x)
    assert torch.equal(y, plain.forward(x))  # (deterministic without output noise)
    # ... but the drop changes the MVM (measured: mean |difference| 0.04, outputs ~0.5).
    assert float((drop.forward(x) - y).abs().mean()) > 0.01
