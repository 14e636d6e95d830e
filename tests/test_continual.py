"""Continual learning: permuted-pixel tasks and the sequential protocol."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from grapes_hw.cli.main import main
from grapes_hw.data.datasets import Dataset
from grapes_hw.errors import ConfigError
from grapes_hw.training.config import TrainConfig
from grapes_hw.training.continual import (
    ContinualConfig,
    make_tasks,
    run_continual,
    scaled_k,
    summarize,
    task_permutation,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny matmuls: OpenMP threads only add overhead (and stall on a busy machine)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("n,k", [(784, 600), (784, 300), (64, 49), (64, 24), (10, 2), (10, 10)])
def test_permutation_moves_exactly_k_pixels(n, k):
    p = task_permutation(n, k, seed=3, task=1)
    assert sorted(p.tolist()) == list(range(n))  # a permutation
    assert int((p != np.arange(n)).sum()) == k  # exactly K positions change index


def test_permutation_fixed_per_task_and_seed():
    a = task_permutation(784, 600, seed=0, task=1)
    assert np.array_equal(a, task_permutation(784, 600, seed=0, task=1))
    assert not np.array_equal(a, task_permutation(784, 600, seed=0, task=2))
    assert not np.array_equal(a, task_permutation(784, 600, seed=1, task=1))


def test_task_zero_is_original_and_k_scaling():
    tasks = make_tasks(64, 4, 49, seed=0)
    assert np.array_equal(tasks[0], np.arange(64))
    assert all(int((t != np.arange(64)).sum()) == 49 for t in tasks[1:])
    x = np.random.default_rng(0).random((5, 64))
    assert np.array_equal(x[:, tasks[0]], x)
    assert scaled_k(600, 64) == 49 and scaled_k(300, 64) == 24 and scaled_k(600, 784) == 600
    with pytest.raises(ConfigError):
        task_permutation(64, 1, 0, 1)
    with pytest.raises(ConfigError):
        task_permutation(64, 65, 0, 1)


def test_summarize_metrics():
    # 2 tasks, 1 epoch each: R = [[.9, .1], [.6, .8]]
    curve = [{"epoch": 0, "acc": [0.1, 0.12]}, {"epoch": 1, "acc": [0.9, 0.1]},
             {"epoch": 2, "acc": [0.6, 0.8]}]
    s = summarize(curve, 2, 1)
    assert s["R"] == [[0.9, 0.1], [0.6, 0.8]]
    assert s["average_accuracy"] == pytest.approx(0.7)
    assert s["forgetting"] == pytest.approx([0.3])
    assert s["backward_transfer"] == pytest.approx(-0.3)
    assert s["future_accuracy"] == pytest.approx([0.1, 0.1])


def _tiny_digits(n_train=300):
    from grapes_hw.data.datasets import load_dataset

    d = load_dataset("digits", train_subset=n_train, seed=0)
    return Dataset(name=d.name, x_train=d.x_train, y_train=d.y_train, x_test=d.x_test[:200],
                   y_test=d.y_test[:200], x_val=d.x_val, y_val=d.y_val, n_classes=10,
                   image_shape=d.image_shape, source=d.source)


def test_protocol_tests_every_task_every_epoch(tmp_path):
    base = TrainConfig.from_flat(dataset="digits", layers=(64,), lr=0.1, batch_size=16)
    cc = ContinualConfig(base=base, n_tasks=3, k_pixels=40, epochs_per_task=2,
                         rules=("sgd", "grapes"))
    s = run_continual(cc, tmp_path, quiet=True, plots=True, dataset=_tiny_digits())
    lines = [json.loads(l) for l in open(tmp_path / "continual.jsonl")]
    assert len(lines) == 2 * (1 + 3 * 2)  # 2 rules x (epoch 0 + 6 epochs)
    for rec in lines:
        assert len(rec["acc"]) == 3 and all(a is not None for a in rec["acc"])
        if rec["epoch"]:
            assert rec["task"] == (rec["epoch"] - 1) // 2
            assert rec["seen"] == [j <= rec["task"] for j in range(3)]
    sgd = [r for r in lines if r["rule"] == "sgd"]
    # task 0 learned during its epochs, well above chance
    assert sgd[2]["acc"][0] > 0.5
    run = s["runs"][0]
    assert len(run["R"]) == 3 and len(run["forgetting"]) == 2 and len(run["future_accuracy"]) == 3
    assert (tmp_path / "continual_float32.png").stat().st_size > 1000
    assert (tmp_path / "continual_average.png").is_file()
    assert json.load(open(tmp_path / "summary.json"))["settings"]["k_pixels"] == 40


def test_cli_continual_errors_and_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["continual", "--rules", "sgd,bogus", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "bogus" in capsys.readouterr().err
    assert main(["continual", "--k-pixels", "1", "--out", str(tmp_path)]) == 2
    assert "--k" in capsys.readouterr().err
    rc = main(["continual", "--tasks", "2", "--epochs-per-task", "1", "--layers", "16",
               "--train-subset", "200", "--k", "300", "--rules", "sgd", "--no-plots", "--quiet",
               "--out", str(tmp_path / "o")])
    assert rc == 0
    s = json.load(open(tmp_path / "o" / "summary.json"))
    assert s["settings"]["k_pixels"] == 24


def test_continual_uses_the_shared_epoch_loop_and_keeps_work_on_ctrl_c(monkeypatch):
    """The task sequence runs in runloop.train_loop: a Ctrl-C in the second task's second
    epoch ends the run as interrupted, with the finished epochs (and the partial one)."""
    from grapes_hw.rules import learner as learning
    from grapes_hw.training.continual import run_sequence

    step = learning.Learner.step
    calls = {"n": 0}
    n_batches = -(-300 // 64)  # the tiny digits training set, batch 64

    def interrupting(self, x, y, lr):
        calls["n"] += 1
        if calls["n"] == 3 * n_batches + 2:  # task 1 (the second), its second epoch
            raise KeyboardInterrupt
        return step(self, x, y, lr)

    monkeypatch.setattr(learning.Learner, "step", interrupting)
    r = run_sequence(TrainConfig.from_flat(dataset="digits", layers=(32,)), _tiny_digits(),
                     n_tasks=3,
                     k_pixels=20, epochs_per_task=2)
    assert r["status"] == "interrupted"
    assert [c["epoch"] for c in r["curve"]] == [0, 1, 2, 3, 4]
    assert [c["task"] for c in r["curve"]] == [-1, 0, 0, 1, 1]


def test_resume_keeps_finished_runs_and_trains_only_new_ones(tmp_path, monkeypatch):
    """A second invocation on the same folder trains only the (rule, seed) pairs it lacks;
    the records of a run that did not finish are dropped and that run starts over; a folder
    of a study with other settings is refused, not overwritten."""
    from grapes_hw.training import continual as cmod

    base = TrainConfig.from_flat(dataset="digits", layers=(32,), lr=0.1, batch_size=32)
    data = _tiny_digits()

    def cc(rules, seeds=(0,), **kw):
        return ContinualConfig(base=kw.pop("base", base), n_tasks=2, k_pixels=20,
                               epochs_per_task=1, rules=rules, seeds=seeds, **kw)

    s1 = run_continual(cc(("sgd", "grapes")), tmp_path, quiet=True, plots=False, dataset=data)
    first = json.loads((tmp_path / "summary.json").read_text())["runs"]
    assert [r["rule"] for r in s1["runs"]] == ["sgd", "grapes"]
    # a killed third run leaves partial records in continual.jsonl and none in summary.json
    with open(tmp_path / "continual.jsonl", "a") as f:
        f.write(json.dumps({"backend": "float32", "rule": "lr-matched", "seed": 0, "epoch": 0,
                            "acc": [0.5, 0.5]}) + "\n")
    trained = []
    real = cmod.run_sequence

    def spy(cfg, *a, **k):
        trained.append(cfg.rule.lr_matched)
        return real(cfg, *a, **k)

    monkeypatch.setattr(cmod, "run_sequence", spy)
    s2 = run_continual(cc(("sgd", "grapes", "lr-matched")), tmp_path, quiet=True, plots=True,
                       dataset=data)
    assert trained == [True]  # only the lr-matched control trained
    assert [r["rule"] for r in s2["runs"]] == ["sgd", "grapes", "lr-matched"]
    assert s2["runs"][:2] == first  # the finished runs kept as they were
    lines = [json.loads(x) for x in open(tmp_path / "continual.jsonl")]
    assert sum(r["rule"] == "lr-matched" for r in lines) == 1 + 2  # epoch 0 + 2 epochs, once
    assert (tmp_path / "continual_float32.png").is_file()
    comp = {(c["rule"], c["baseline"]) for c in s2["comparisons"]}
    assert comp == {("grapes", "sgd"), ("lr-matched", "sgd"), ("grapes", "lr-matched")}
    # another seed adds a run and the means now have a (ddof=1) spread
    s3 = run_continual(cc(("sgd",), seeds=(1,)), tmp_path, quiet=True, plots=False, dataset=data)
    sgd = [r["average_accuracy"] for r in s3["runs"] if r["rule"] == "sgd"]
    row = next(m for m in s3["mean"] if m["rule"] == "sgd")
    assert row["n_seeds"] == 2 and row["average_accuracy_std"] == pytest.approx(
        float(np.std(sgd, ddof=1)))
    assert s3["settings"]["seeds"] == [0, 1] and s3["settings"]["rules"][0] == "sgd"
    with pytest.raises(ConfigError, match="differs in base.lr"):
        run_continual(cc(("sgd",), base=base.replace(lr=0.05)), tmp_path, quiet=True,
                      plots=False, dataset=data)
    assert len(json.loads((tmp_path / "summary.json").read_text())["runs"]) == 4


def test_damaged_folder_is_refused_untouched_and_a_torn_line_dropped(tmp_path):
    from grapes_hw.training import continual as cmod

    base = TrainConfig.from_flat(dataset="digits", layers=(32,), lr=0.1, batch_size=32)
    cc = ContinualConfig(base=base, n_tasks=2, k_pixels=20, epochs_per_task=1, rules=("sgd",),
                         seeds=(0,))
    run_continual(cc, tmp_path, quiet=True, plots=False, dataset=_tiny_digits())
    settings = json.loads((tmp_path / "summary.json").read_text())["settings"]
    jfile = tmp_path / "continual.jsonl"
    good = jfile.read_text()
    # a kill mid-write leaves a torn last line (no newline): dropped, the finished run kept
    jfile.write_text(good + '{"backend": "float32", "rule": "grap')
    runs, _ = cmod._previous_runs(tmp_path, settings)
    assert [r["rule"] for r in runs] == ["sgd"] and jfile.read_text() == good
    for name, text in (("summary.json", "{not json"), ("summary.json", "[1, 2]"),
                       ("summary.json", json.dumps({"settings": settings,
                                                    "runs": [{"rule": "sgd"}]})),
                       ("continual.jsonl", "garbage\n")):
        keep = {f: (tmp_path / f).read_text() for f in ("summary.json", "continual.jsonl")}
        (tmp_path / name).write_text(text)
        before = {f: (tmp_path / f).read_text() for f in keep}
        with pytest.raises(ConfigError, match="damaged continual study") as e:
            cmod._previous_runs(tmp_path, settings)
        assert e.value.field == "--out"
        assert {f: (tmp_path / f).read_text() for f in keep} == before  # nothing rewritten
        for f, t in keep.items():
            (tmp_path / f).write_text(t)


def test_continual_comparison_p_values():
    from grapes_hw.training.continual import _comparisons

    def run(rule, seed, acc):
        return {"backend": "float32", "rule": rule, "seed": seed, "average_accuracy": acc,
                "mean_forgetting": 0.1, "future_accuracy": [0.1, 0.2, 0.3]}

    runs = [run("sgd", 0, 0.70), run("sgd", 1, 0.71), run("sgd", 2, 0.72),
            run("grapes", 0, 0.80), run("grapes", 1, 0.82), run("grapes", 2, 0.81)]
    (c,) = _comparisons(runs)
    from scipy import stats

    assert c["average_accuracy_welch_p"] == pytest.approx(
        stats.ttest_ind([0.8, 0.82, 0.81], [0.7, 0.71, 0.72], equal_var=False).pvalue)
    assert c["mean_future_accuracy"] == pytest.approx(0.25)
    assert c["mean_forgetting_welch_p"] == 1.0  # equal, no spread


def test_cli_continual_refuses_what_would_be_recorded_but_not_used(tmp_path, capsys):
    from conftest import call

    small = ["continual", "--tasks", "2", "--epochs-per-task", "1", "--layers", "8",
             "--train-subset", "128", "--no-plots", "--quiet"]
    for args, option in ((["--rules", "sgd", "--momentum", "0.5"], "--momentum"),
                         (["--rules", "sgd", "--time-steps", "3"], "--time-steps"),
                         (["--rules", "sgd", "--grapes-lower", "0.5"], "--grapes-lower"),
                         (["--seeds", "0,00"], "--seeds"),  # one seed twice: no replicate
                         (["--k-pixels", "65"], "--k-pixels")):  # (not --k)
        rc, err = call(capsys, *small, *args, "--out", str(tmp_path / "o"))
        assert rc == 2 and option in err and "Traceback" not in err, (args, err)
        assert not (tmp_path / "o").exists()  # no empty folder left behind
    # --grapes-lower acts on the grapes rule: accepted when that rule is among them
    rc, err = call(capsys, *small, "--rules", "sgd,grapes", "--grapes-lower", "0.5",
                   "--out", str(tmp_path / "o"))
    assert rc == 0, err


def test_continual_refuses_a_folder_whose_device_file_changed(tmp_path):
    """Runs on a device file edited since (8 -> 2 bits) were kept as if current."""
    dev = tmp_path / "mydev.toml"
    dev.write_text('name = "mydev"\ndescription = "d"\nbackend = "fixed"\n[fixed]\nbits = 8\n')
    base = TrainConfig.from_flat(dataset="digits", layers=(16,), lr=0.1, batch_size=32)
    cc = ContinualConfig(base=base, n_tasks=2, k_pixels=20, epochs_per_task=1, rules=("sgd",),
                         backends=(str(dev),), seeds=(0,))
    out = tmp_path / "o"
    run_continual(cc, out, quiet=True, plots=False, dataset=_tiny_digits())
    dev.write_text(dev.read_text().replace("bits = 8", "bits = 2"))
    for backends in ((str(dev),), ("float32",)):  # named again, or only among the old runs
        with pytest.raises(ConfigError, match="another version of that device model"):
            run_continual(replace(cc, backends=backends), out, quiet=True, plots=False,
                          dataset=_tiny_digits())
