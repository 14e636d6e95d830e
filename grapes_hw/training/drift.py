"""Inference drift: program a trained network's analog tiles and measure test accuracy after
1 s, 1 h, 1 day and 1 year, with global drift compensation on and off.
"""

from __future__ import annotations

import torch

from grapes_hw.errors import ConfigError

DRIFT_TIMES = (1.0, 3600.0, 86400.0, 31536000.0)
"""Seconds after programming at which drift is evaluated: 1 s, 1 h, 1 day, 1 year."""


def check_drift_layers(net) -> list:
    """The backends of ``net``'s layers, if every one can drift (an analog inference tile);
    else ConfigError naming ``drift_eval``."""
    layers = [layer.backend for layer in net.layers]
    if not all(b.abilities.drift for b in layers):
        raise ConfigError("drift_eval", "needs every layer on an analog inference tile "
                                          "(an InferenceRPUConfig-based device model, e.g. "
                                          "pcm-inference)")
    return layers


def drift_evaluation(net, x_test: torch.Tensor, y_test: torch.Tensor,
                     times: tuple[float, ...] = DRIFT_TIMES, repeats: int = 3,
                     seed: int = 0) -> list[dict]:
    """Program every analog layer with its noise model, drift, and test.

    For each compensation setting (global drift compensation on, off) and each time, the
    trained weights are programmed afresh (new programming noise) ``repeats`` times; the
    mean and std of the test accuracy are reported. Needs InferenceRPUConfig-based tiles.
    """
    layers = check_drift_layers(net)
    out = []
    torch.manual_seed(seed)
    for comp in (True, False):
        for t in times:
            accs = []
            for _ in range(repeats):
                for b in layers:
                    b.program_and_drift(t, compensation=comp)
                accs.append(float((net.predict(x_test) == y_test).double().mean()))
            acc = torch.tensor(accs, dtype=torch.float64)
            out.append({"t_seconds": t, "compensation": comp, "test_acc": float(acc.mean()),
                        "test_acc_std": float(acc.std()) if repeats > 1 else 0.0,
                        "repeats": repeats})
    return out
