"""Your own aihwkit device through grapes_hw's training run:
``TrainConfig.from_flat(backend=rpu_config)``.

An aihwkit RPU configuration built in Python -- here a single soft-bounds device per weight
with 10 % device-to-device variation, weights mapped to 0.6 of its conductance range -- goes
straight into ``grapes_hw.TrainConfig.backend``. ``grapes_hw.run`` then trains grapes_hw's own
network on tiles of that device (one tile per layer, ``AnalogTileBackend``) and returns the
same result dictionary as ``grapes-hw train --out``: per-epoch curve, best test accuracy,
plateau-fit slowness, write pulses (estimated on CPU as ``sum |dW| / dw_min``), memory. The
result records the device by class name (``config.device.backend``) and in full (the config's
``repr`` under ``device_model.extra.rpu_config``), so it stays JSON.

Plain SGD and propagating GRAPES are run on the same device, seeds and data order.

    python examples/custom_rpu_config.py                  # ~15 s on one core
    python examples/custom_rpu_config.py --out results/   # also writes one result.json per run
    python examples/custom_rpu_config.py --smoke          # a few seconds (used by the tests)
"""

from __future__ import annotations

import argparse
import json
import os

from aihwkit.simulator.configs import SingleRPUConfig
from aihwkit.simulator.configs.devices import SoftBoundsDevice

from grapes_hw.training.config import TrainConfig
from grapes_hw.training.train import run


def my_device() -> SingleRPUConfig:
    """A soft-bounds device: the step shrinks as the conductance nears its bound."""
    cfg = SingleRPUConfig(device=SoftBoundsDevice(
        dw_min=0.002, w_max=1.0, w_min=-1.0,
        dw_min_dtod=0.1, w_max_dtod=0.1, w_min_dtod=0.1))  # device-to-device spread
    cfg.mapping.weight_scaling_omega = 0.6  # the largest initial weight -> 0.6 of w_max
    return cfg


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny run for the tests")
    p.add_argument("--out", help="folder to write <grapes>.json result files into (files "
                                 "of an earlier run of this script there are replaced)")
    args = p.parse_args(argv)
    if args.out is not None:  # a path that cannot be a folder fails now, not after training
        from grapes_hw.errors import ConfigError
        from grapes_hw.studies.store import check_out_dir

        try:
            check_out_dir(args.out, "--out")
        except ConfigError as e:
            p.error(str(e))  # exit 2 with the usage line
    size = (dict(layers=(16,), epochs=1, train_subset=300) if args.smoke
            else dict(layers=(64,), epochs=10))
    results = []
    for grapes in ("off", "propagating"):
        cfg = TrainConfig.from_flat(dataset="digits", backend=my_device(), optimizer="sgd", lr=0.05,
                          grapes=grapes, seed=0, **size)
        r = run(cfg)
        results.append(r)
        slowness = "n/a" if r["slowness"] is None else f"{r['slowness']:.2f}"
        print(f"grapes {grapes:12s} best test acc {r['best_test_acc']:.4f}  slowness {slowness}"
              f"  pulses {r['pulses_total']:.3g}  devices {r['memory']['device_count']}  "
              f"{r['seconds_total']:.1f} s", flush=True)
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, f"{grapes}.json"), "w") as f:
                json.dump(r, f, indent=1)
    recorded = results[0]["device_model"]["extra"]["rpu_config"]
    print(f"recorded as config.backend = {results[0]['config']['backend']!r}; "
          f"device_model.extra.rpu_config = {recorded[:60]}...")
    return results


if __name__ == "__main__":
    main()
