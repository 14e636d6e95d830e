"""The paper-reproduction studies (issue 16): their grids expand to exactly the paper's
protocols (dry run, nothing is trained), and the continual-learning command lines in
studies/README.md parse to the paper's settings."""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

import pytest

from grapes_hw.studies.spec import load_study

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "studies"


def _rule(cfg) -> str:
    if cfg.rule.grapes != "off":
        return f"grapes-{cfg.rule.grapes}"
    return "lr-matched" if cfg.rule.lr_matched else "sgd"


def _common_paper_settings(cfg) -> None:
    assert cfg.data.dataset == "fashion-mnist"  # the paper: MNIST, whose training set is not here
    assert cfg.network.model == "mlp" and cfg.network.activation == "relu"
    assert cfg.rule.optimizer == "sgd" and cfg.rule.lr == 0.001 and cfg.run.batch_size == 64
    assert cfg.device.backend == "float32" and cfg.rule.credit == "bp"


def test_depth_study_grid_is_the_fig4bc_protocol():
    st = load_study(STUDIES / "depth_scaling.toml", check_backends=False)
    got = [(r.config.network.layers[0], len(r.config.network.layers), _rule(r.config),
            r.config.run.seed)
           for r in st.runs]
    want = set(itertools.product((128, 256, 512), (2, 4, 6, 8, 10),
                                 ("sgd", "grapes-propagating", "lr-matched"), (0, 1, 2)))
    assert len(got) == len(set(got)) == 135
    assert set(got) == want
    assert len({r.key for r in st.runs}) == 135
    for r in st.runs:
        cfg = r.config
        _common_paper_settings(cfg)
        assert len(set(cfg.network.layers)) == 1  # one width per network
        assert cfg.network.dropout == 0.1
        assert cfg.run.epochs >= 50
        assert cfg.rule.grapes_lower == 1.0 and not cfg.network.bias
    quick = load_study(STUDIES / "depth_scaling.toml", quick=True, check_backends=False)
    assert {r.config.data.dataset for r in quick.runs} == {"digits"}
    assert len(quick.runs) <= 12 and {r.config.run.seed for r in quick.runs} == {0}


def test_convergence_study_is_the_fig4a_protocol():
    st = load_study(STUDIES / "convergence.toml", check_backends=False)
    got = {(_rule(r.config), r.config.run.seed) for r in st.runs}
    assert len(st.runs) == 9
    assert got == set(itertools.product(("sgd", "grapes-propagating", "lr-matched"), (0, 1, 2)))
    for r in st.runs:
        _common_paper_settings(r.config)
        assert r.config.network.layers == (256,) * 10
        assert r.config.network.dropout == 0.0 and r.config.run.epochs >= 100


def test_snu_study_is_the_fig7a_protocol():
    st = load_study(STUDIES / "snu.toml", check_backends=False)
    got = {(r.config.network.model, tuple(r.config.network.layers), r.config.rule.grapes,
            r.config.run.seed)
           for r in st.runs}
    models = {("snu", (256, 256, 256)), ("ssnu", (256, 256))}  # the paper's depths
    assert len(st.runs) == 12
    assert got == {(m, lay, g, s) for (m, lay), g, s in
                   itertools.product(models, ("off", "propagating"), (0, 1, 2))}
    for r in st.runs:
        cfg = r.config
        assert cfg.data.dataset == "fashion-mnist" and cfg.rule.optimizer == "sgd"
        assert cfg.resolved_lr() == (0.1, "default for sgd")  # the SNU defaults' lr
        assert cfg.network.time_steps == 20 and cfg.network.test_time_steps > cfg.network.time_steps
        assert cfg.extra == {}  # the package's SNU defaults
    quick = load_study(STUDIES / "snu.toml", quick=True, check_backends=False)
    assert {r.config.data.dataset for r in quick.runs} == {"digits"} and len(quick.runs) == 4


def _paper_section() -> str:
    text = (STUDIES / "README.md").read_text()
    return text[text.index("## Paper reproduction"):]


def _continual_commands() -> list[list[str]]:
    """The ``grapes-hw continual`` lines of the section's shell blocks, as CLI arguments."""
    blocks = re.findall(r"```sh\n(.*?)```", _paper_section(), flags=re.S)
    cmds = []
    for line in "\n".join(blocks).replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if "grapes-hw" in words and "continual" in words:
            cmds.append(words[words.index("grapes-hw") + 1:])
    return cmds


def test_readme_continual_commands_are_the_papers_settings(monkeypatch):
    import grapes_hw.training.continual as continual
    from grapes_hw.cli.main import main

    seen = []

    def fake_run(cc, out, **kw):
        seen.append((cc, str(out)))
        return {"mean": []}

    monkeypatch.setattr(continual, "run_continual", fake_run)
    cmds = _continual_commands()
    assert len(cmds) == 2
    for args in cmds:
        assert main(args) == 0
    assert sorted(cc.k for cc, _ in seen) == [300, 600]
    assert len({out for _, out in seen}) == 2  # one results folder per K
    for cc, _ in seen:
        cc.check()
        b = cc.base.flat()
        assert b["dataset"] == "fashion-mnist" and b["model"] == "mlp"
        assert b["layers"] == (256, 256, 256) and b["activation"] == "relu"
        assert b["dropout"] == 0.1 and b["optimizer"] == "sgd" and b["lr"] == 0.001
        assert b["batch_size"] == 64
        assert cc.n_tasks == 5 and cc.epochs_per_task == 10 and cc.k_pixels is None
        assert cc.rules == ("sgd", "grapes", "lr-matched") and cc.seeds == (0, 1, 2)
        assert cc.backends == ("float32",)
        for rule in cc.rules:  # the dropout reaches every rule's run
            assert cc.rule_config(rule, "float32", 0).network.dropout == 0.1


def test_snu_digits_study_is_the_fig7a_protocol_on_digits():
    st = load_study(STUDIES / "snu_digits.toml", check_backends=False)
    full = load_study(STUDIES / "snu.toml", check_backends=False)
    assert len(st.runs) == 20  # 2 models x 2 rules x 5 seeds
    assert {r.config.run.seed for r in st.runs} == set(range(5))
    for r in st.runs:  # everything as in snu.toml but the dataset
        twin = next(f for f in full.runs if f.config.network.model == r.config.network.model
                    and f.config.rule.grapes == r.config.rule.grapes)
        assert r.config.data.dataset == "digits"
        assert r.config.replace(dataset="fashion-mnist", seed=0) == twin.config.replace(seed=0)
    quick = load_study(STUDIES / "snu_digits.toml", quick=True, check_backends=False)
    assert len(quick.runs) == 4 and {r.config.run.epochs for r in quick.runs} == {4}


@pytest.mark.parametrize("name", ["depth_scaling", "convergence", "snu", "snu_digits"])
def test_study_headers_state_the_compute_estimate(name):
    head = (STUDIES / f"{name}.toml").read_text().split("[study]")[0]
    assert "no MNIST training set" in head
    assert re.search(r"CPU-hours at[\s#]+1[\s#]+worker", head), head
