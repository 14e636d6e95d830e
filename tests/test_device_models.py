"""Every shipped device model loads, lists and trains the digits data."""

from __future__ import annotations

import dataclasses
import importlib.util
import re

import pytest

from grapes_hw.backends.registry import list_models, load_device_model
from grapes_hw.cli.main import main
from grapes_hw.errors import ConfigError
from grapes_hw.training.config import TrainConfig
from grapes_hw.training.train import run

MODELS = [p.stem for p in list_models()]
# Models that must learn digits in one epoch. Others (e.g. sweep grids down to 2-bit
# round-to-nearest, which by design cannot learn) must load and run cleanly.
MUST_LEARN = ("float32", "fixed16", "fixed8", "fixed6", "fixed4", "fixed8-nearest",
              "float32-read5", "float32-read10", "float32-write2", "fixed8-read5",
              "fixed8-write2", "fixed8-stuck1")


def test_the_issue_models_are_shipped():
    for name in MUST_LEARN:
        assert name in MODELS


@pytest.mark.parametrize("name", MODELS)
def test_shipped_model_loads_and_trains_digits(name):
    m = load_device_model(name)
    assert m.name == name and m.description
    if m.backend == "analog" and importlib.util.find_spec("aihwkit") is None:
        pytest.skip("aihwkit is not installed")
    r = run(TrainConfig.from_flat(dataset="digits", layers=(64,), epochs=1, lr=0.1, backend=name,
                        seed=0))
    assert r["status"] == "ok"
    assert len(r["epochs"]) == 1 and r["epochs"][0]["train_loss"] is not None
    if name in MUST_LEARN:
        assert r["best_test_acc"] > 0.3, r["best_test_acc"]  # chance 0.1; float32 gets 0.48
    assert r["device_model"]["name"] == name


def test_devices_command_lists_every_model_with_its_description(capsys):
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    for name in MODELS:
        m = load_device_model(name)
        assert any(line.split()[0] == name and m.description in line
                   for line in out.splitlines() if line.strip()), name


# ---- strict loading: typos and missing tables exit 2 naming the file and key ----------------
def cli(capsys, *args):
    try:
        rc = main(list(args))
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


FIXED6 = 'name = "x"\ndescription = "d"\nbackend = "fixed"\n\n[fixed]\nbits = 6\n'


@pytest.mark.parametrize("command", [["train", "--epochs", "1", "--backend"], ["devices"]])
def test_top_level_typo_is_named_with_a_hint(capsys, tmp_path, command):
    bad = tmp_path / "typo.toml"
    bad.write_text(FIXED6.replace("description =", "descripton ="))
    rc, _, err = cli(capsys, *command, str(bad))
    assert rc == 2, err
    assert str(bad) in err and "'descripton'" in err
    assert "did you mean 'description'?" in err
    assert "required key is missing" not in err and "Traceback" not in err


def test_nested_typo_is_named_with_a_hint(capsys, tmp_path):
    bad = tmp_path / "nested.toml"
    bad.write_text(FIXED6.replace("bits = 6", "bitz = 6"))
    rc, _, err = cli(capsys, "train", "--epochs", "1", "--backend", str(bad))
    assert rc == 2
    assert "fixed.bitz" in err and str(bad) in err and "did you mean 'bits'?" in err
    noise = tmp_path / "noise.toml"
    noise.write_text(FIXED6 + "\n[noise]\nread_sigam = 0.1\n")
    rc, _, err = cli(capsys, "devices", str(noise))
    assert rc == 2 and "noise.read_sigam" in err and "did you mean 'read_sigma'?" in err


def test_a_misspelt_value_gets_a_hint(tmp_path):
    bad = tmp_path / "value.toml"
    bad.write_text(FIXED6 + 'rounding = "stocastic"\n')
    with pytest.raises(ConfigError) as e:
        load_device_model(str(bad))
    assert e.value.field == "fixed.rounding"
    assert "did you mean 'stochastic'?" in e.value.message and "'nearest'" in e.value.message


@pytest.mark.parametrize("kind, table", [("fixed", "bits = 8"), ("analog",
                                                                 'rpu_config = "PCMPreset"')])
def test_missing_required_table_exits_2_naming_file_and_table(capsys, tmp_path, kind, table):
    bad = tmp_path / f"no-{kind}.toml"
    bad.write_text(f'name = "x"\ndescription = "d"\nbackend = "{kind}"\n')
    rc, _, err = cli(capsys, "train", "--epochs", "1", "--backend", str(bad))
    assert rc == 2, err
    assert str(bad) in err and f"[{kind}] table" in err and "missing" in err
    # the same file with the table loads
    bad.write_text(bad.read_text() + f"\n[{kind}]\n{table}\n")
    if kind == "analog" and importlib.util.find_spec("aihwkit") is None:
        return
    assert load_device_model(str(bad)).backend == kind


@pytest.mark.parametrize("body, field, says", [
    # an empty table is the defaults, which no one chose (as a missing table)
    ("[fixed]\n", "fixed", "is empty"),
    ("[analog]\n", "analog", "is empty"),
    # w_max_factor sets the range only for w_max = "auto": with a number it was ignored
    ("[fixed]\nbits = 8\nw_max = 0.5\nw_max_factor = 3.0\n", "fixed.w_max_factor",
     "only with w_max"),
    # a noise std far beyond any device overflowed the weights to inf (a traceback)
    ("[fixed]\nbits = 8\n[noise]\nwrite_sigma = 1e300\n", "noise.write_sigma", "[0, 10]"),
    ("[fixed]\nbits = 8\n[noise]\nread_sigma = 11.0\n", "noise.read_sigma", "[0, 10]"),
])
def test_tables_that_would_be_ignored_or_overflow_are_refused(tmp_path, body, field, says):
    kind = "analog" if "[analog]" in body else "fixed"
    f = tmp_path / "m.toml"
    f.write_text(f'name = "m"\ndescription = "d"\nbackend = "{kind}"\n{body}')
    with pytest.raises(ConfigError, match=re.escape(says)) as e:
        load_device_model(str(f))
    assert e.value.field == field
    # the same range given once, and the largest std accepted, load
    f.write_text('name = "m"\ndescription = "d"\nbackend = "fixed"\n[fixed]\nbits = 8\n'
                 'w_max = 0.5\n[noise]\nwrite_sigma = 10.0\n')
    assert load_device_model(str(f)).params.w_max == 0.5


def test_float_table_may_be_left_out(tmp_path):
    f = tmp_path / "f.toml"
    f.write_text('name = "f"\ndescription = "d"\nbackend = "float"\n')
    assert load_device_model(str(f)).params.dtype == "float32"


def test_table_of_another_backend_is_an_error(tmp_path):
    f = tmp_path / "f.toml"
    f.write_text('name = "f"\ndescription = "d"\nbackend = "float"\n[fixed]\nbits = 4\n')
    with pytest.raises(ConfigError) as e:
        load_device_model(str(f))
    assert e.value.field == "fixed" and "backend = 'float'" in e.value.message


def test_every_table_of_every_shipped_model_is_explicit():
    """Shipped fixed/analog models carry their own table (the rule above holds for them)."""
    import tomllib

    for path in list_models():
        raw = tomllib.loads(path.read_text())
        if raw["backend"] in ("fixed", "analog"):
            assert raw["backend"] in raw, path


# ---- grapes-hw devices [NAME] ---------------------------------------------------------------
def test_devices_list_is_grouped_by_kind_and_naturally_sorted(capsys):
    rc, out, _ = cli(capsys, "devices")
    assert rc == 0 and "cannot load" not in out
    lines = out.splitlines()
    names = [ln.split()[0] for ln in lines if ln.startswith("  ")]
    assert sorted(names) == sorted(MODELS)
    assert names.index("fixed2") < names.index("fixed3") < names.index("fixed10")
    assert names.index("fixed8-read5") < names.index("fixed8-read10")
    heads = [i for i, ln in enumerate(lines) if ln and not ln.startswith(" ")
             and ln.split(":")[0] in ("float", "fixed", "analog")]
    assert [lines[i].split(":")[0] for i in heads] == ["float", "fixed", "analog"]
    for name in MODELS:  # each name sits under its kind's heading
        kind = load_device_model(name).backend
        row = next(i for i, ln in enumerate(lines) if ln.startswith("  ")
                   and ln.split()[0] == name)
        assert lines[max(i for i in heads if i < row)].startswith(kind + ":"), name


def test_devices_name_prints_every_field_with_value_unit_and_citation(capsys):
    from grapes_hw.config import field_docs

    rc, out, _ = cli(capsys, "devices", "fixed8-read5")
    assert rc == 0
    flat = " ".join(out.split())
    m = load_device_model("fixed8-read5")
    for obj in (m.params, m.noise):
        docs = field_docs(type(obj))
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            shown = "none" if v is None else (f'"{v}"' if isinstance(v, str) else str(v))
            assert f"{f.name} = {shown}" in flat, f.name
            assert " ".join(docs[f.name].replace("``", "").split()) in flat, f.name
    assert "weight units" in flat and "dimensionless" in flat  # w_max, sigmas
    assert "dac_bits = none (default)" in flat and "bits = 8 " in flat
    assert "citation:" in out
    assert "``" not in out


def test_devices_name_shows_the_citation(capsys):
    rc, out, _ = cli(capsys, "devices", "pcm-insitu")
    if rc == 2 and importlib.util.find_spec("aihwkit") is None:
        pytest.skip("aihwkit is not installed")
    assert rc == 0
    assert load_device_model("pcm-insitu").citation in out
    assert '"mapping.weight_scaling_omega" = 0.5' in out


def test_devices_unknown_name_exits_2_listing_the_names(capsys):
    rc, out, err = cli(capsys, "devices", "fixed7")
    assert rc == 2 and out == ""
    assert "NAME" in err and "'fixed7'" in err and "Traceback" not in err
    for name in ("fixed2", "fixed8", "float32", "pcm-insitu"):
        assert name in err
