"""TrainConfig: five typed groups, flat names at the boundary, errors naming the field."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from grapes_hw.cli.main import main
from grapes_hw.data.sources import DATASETS
from grapes_hw.errors import ConfigError
from grapes_hw.studies.spec import study_from_dict
from grapes_hw.training.config import (
    FIELDS,
    GROUPS,
    NetworkConfig,
    RuleConfig,
    TrainConfig,
)


def test_flat_names_are_unique_and_cover_every_group_field():
    n = sum(len(dataclasses.fields(cls)) for cls in GROUPS.values())
    assert len(FIELDS) == n  # a name in two groups would collapse here
    assert FIELDS["lr"] == "rule" and FIELDS["dataset"] == "data"
    assert FIELDS["backend"] == "device" and FIELDS["seed"] == "run"
    assert FIELDS["model"] == "network"


def test_from_flat_and_flat_round_trip():
    cfg = TrainConfig.from_flat(dataset="fashion-mnist", lr=0.02, layers=(64, 32), seed=3,
                                backend="fixed8", extra={"snu": {"alpha": 0.5}})
    assert cfg.data.dataset == "fashion-mnist" and cfg.rule.lr == 0.02
    assert cfg.network.layers == (64, 32) and cfg.run.seed == 3
    assert cfg.device.backend == "fixed8" and cfg.extra == {"snu": {"alpha": 0.5}}
    again = TrainConfig.from_flat(**cfg.flat())
    assert again == cfg
    assert set(cfg.flat()) == set(FIELDS) | {"extra"}


def test_replace_changes_only_the_named_fields_and_copies():
    cfg = TrainConfig.from_flat(lr=0.05, epochs=4)
    new = cfg.replace(epochs=2, grapes="local")
    assert (new.run.epochs, new.rule.grapes, new.rule.lr) == (2, "local", 0.05)
    assert (cfg.run.epochs, cfg.rule.grapes) == (4, "off")  # the original is untouched


def test_an_unknown_flat_name_is_named_with_a_suggestion():
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_flat(learning_rate=0.1)
    assert e.value.field == "learning_rate"
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        TrainConfig.from_flat(epoch=3)


@pytest.mark.parametrize("field,value,allowed", [
    ("optimizer", "sgdd", "sgd, momentum, nag, rmsprop, adam"),
    ("credit", "hebb", "bp, fa, dfa"),
    ("activation", "gelu", "relu, tanh"),
    ("model", "rnn", "mlp, snu, ssnu, cnn"),
    ("dataset", "cifar", "digits, fashion-mnist, mnist"),
    ("velocity_rounding", "up", "nearest, stochastic"),
])
def test_every_choice_is_a_literal_and_a_bad_one_names_field_and_values(field, value, allowed):
    tp = TrainConfig.field_types()[field]
    assert typing.get_origin(tp) is typing.Literal
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_flat(**{field: value}).check()
    assert e.value.field == field and allowed in e.value.message


def test_dataset_literal_is_the_data_modules_list():
    assert typing.get_args(TrainConfig.field_types()["dataset"]) == tuple(DATASETS)


def test_group_checks_name_python_fields_and_the_cli_names_flags(capsys):
    with pytest.raises(ConfigError) as e:
        RuleConfig(momentum=1.5).check()
    assert e.value.field == "momentum"
    with pytest.raises(ConfigError) as e:
        NetworkConfig(dropout=1.0).check()
    assert e.value.field == "dropout"
    # a library check (not argparse's): the field velocity_bits comes back as its flag
    assert main(["train", "--velocity-bits", "8", "--optimizer", "sgd"]) == 2
    err = capsys.readouterr().err
    assert "--velocity-bits: applies to optimizer 'momentum' or 'nag'" in err


def test_a_study_value_of_the_wrong_choice_is_refused_by_its_literal():
    raw = {"study": {"name": "t"}, "base": {"dataset": "digits", "optimizer": "adamw"}}
    with pytest.raises(ConfigError) as e:
        study_from_dict(raw, check_backends=False)
    assert e.value.field == "base.optimizer" and "adam" in e.value.message


def test_every_field_has_a_docstring():
    for name in FIELDS:
        assert TrainConfig.field_doc(name), name
