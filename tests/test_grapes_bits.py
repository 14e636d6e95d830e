"""GRAPES factor precision end to end: ``--grapes-bits 2`` gives only 4 levels."""

from __future__ import annotations

import torch

from grapes_hw.cli.main import main
from grapes_hw.rules.learner import Learner


def _record_factors(monkeypatch) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    orig = Learner.step

    def step(self, x, y, lr):
        out = orig(self, x, y, lr)
        seen.extend(m.detach().clone() for m in self.last_factors if m is not None)
        return out

    monkeypatch.setattr(Learner, "step", step)
    return seen


def test_grapes_bits_2_uses_only_four_levels(monkeypatch, tmp_path):
    seen = _record_factors(monkeypatch)
    rc = main(["train", "--dataset", "digits", "--layers", "64,64", "--epochs", "1", "--quiet",
               "--grapes", "propagating", "--grapes-bits", "2", "--backend", "fixed8",
               "--out", str(tmp_path / "r.json")])
    assert rc == 0 and seen
    values = torch.unique(torch.cat(seen))
    levels = torch.tensor([1.0, 4 / 3, 5 / 3, 2.0])
    nearest = (values[:, None] - levels[None, :]).abs().min(1).values
    assert float(nearest.max()) < 1e-6, values
    assert len(values) >= 3  # really used, not collapsed to one value


def test_full_precision_factors_are_not_on_four_levels(monkeypatch):
    seen = _record_factors(monkeypatch)
    assert main(["train", "--dataset", "digits", "--layers", "64,64", "--epochs", "1",
                 "--quiet", "--grapes", "propagating"]) == 0
    assert len(torch.unique(torch.cat(seen))) > 50
