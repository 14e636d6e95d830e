"""Command-line interface: ``grapes-hw train | demo | devices | sweep | report``.

Bad input exits with status 2 and a message naming the option and the allowed values,
never a traceback. A run's result is written even when it diverges or is interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from .errors import BackendUnavailable, ConfigError, DataError

PROG = "grapes-hw"


# ---- argument types: each error names the value; argparse adds the option name ------------
def positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{s!r}: must be a positive integer (>= 1)")
    return v


def nonneg_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{s!r}: must be >= 0")
    return v


def positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"{s!r}: must be a positive finite number")
    return v


def unit_interval(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not (0.0 <= v < 1.0):
        raise argparse.ArgumentTypeError(f"{s!r}: must be in [0, 1)")
    return v


def layer_list(s: str) -> tuple[int, ...]:
    parts = [p.strip() for p in s.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(
            f"{s!r}: expected comma-separated widths, e.g. 256,256,256")
    out = []
    for p in parts:
        try:
            v = int(p)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{s!r}: {p!r} is not an integer; expected comma-separated widths, e.g. 256,256,256"
            ) from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{s!r}: widths must be >= 1")
        out.append(v)
    return tuple(out)


def lower_bound(s: str) -> float | None:
    if s.lower() in ("none", "unbounded"):
        return None
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r}: expected a number in [0, 2] or 'none'") from None
    if not 0.0 <= v <= 2.0:
        raise argparse.ArgumentTypeError(f"{s!r}: expected a number in [0, 2] or 'none'")
    return v


class _Parser(argparse.ArgumentParser):
    """argparse, but errors print 'grapes-hw CMD: error: ...' and exit 2 (its default)."""


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from .data import DATASETS

    p.add_argument("--dataset", choices=DATASETS, default="digits", help="dataset (default digits)")
    p.add_argument("--layers", type=layer_list, default=(256, 256, 256),
                   help="hidden widths, comma-separated (default 256,256,256)")
    p.add_argument("--activation", choices=("relu", "tanh"), default="relu")
    p.add_argument("--backend", default="float32",
                   help="device model name (see 'grapes-hw devices') or path to a TOML file")
    p.add_argument("--optimizer", choices=("sgd", "momentum", "nag", "rmsprop", "adam"),
                   default="sgd")
    p.add_argument("--grapes", choices=("off", "local", "propagating"), default="off")
    p.add_argument("--credit", choices=("bp", "fa", "dfa"), default="bp")
    p.add_argument("--lr", type=positive_float, default=0.1, help="learning rate (default 0.1)")
    p.add_argument("--momentum", type=unit_interval, default=0.9,
                   help="momentum coefficient for momentum/nag (default 0.9)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--train-subset", type=positive_int, default=None, metavar="N")
    p.add_argument("--val-fraction", type=unit_interval, default=0.0)
    p.add_argument("--dropout", type=unit_interval, default=0.0, metavar="P")
    p.add_argument("--lr-matched", action="store_true",
                   help="SGD control: lr times the mean GRAPES factor at initialisation")
    p.add_argument("--bias", action="store_true", help="add a (digital) bias to every layer")
    p.add_argument("--grapes-lower", type=lower_bound, default=1.0,
                   help="lower bound of the GRAPES factor (default 1; 'none' = unbounded)")
    p.add_argument("--grapes-bits", type=positive_int, default=None,
                   help="hold the GRAPES factor at this many bits (default: full precision)")
    p.add_argument("--grapes-ideal-read", action="store_true",
                   help="GRAPES importance from ideal stored weights, not the hardware read")
    p.add_argument("--model", choices=("mlp", "snu", "ssnu"), default="mlp",
                   help="mlp, or spiking neural units (snu) / soft SNUs (ssnu) with BPTT")
    p.add_argument("--time-steps", type=positive_int, default=20, metavar="N",
                   help="snu/ssnu: rate-coding steps per training sample (default 20)")
    p.add_argument("--test-time-steps", type=positive_int, default=20, metavar="N",
                   help="snu/ssnu: rate-coding steps at test (default 20; the paper used 300)")
    p.add_argument("--velocity-bits", type=positive_int, default=None, metavar="BITS",
                   help="momentum/nag velocity in BITS-bit fixed point, per-tensor power-of-two "
                        "scale (default: float32)")
    p.add_argument("--velocity-rounding", choices=("nearest", "stochastic"), default="nearest",
                   help="rounding of the fixed-point velocity (default nearest)")
    p.add_argument("--drift-eval", action="store_true",
                   help="analog inference tiles: after training, test after 1 s, 1 h, 1 day "
                        "and 1 year of PCM drift, with drift compensation on and off")
    p.add_argument("--data-dir", default=None, help="look here first for dataset files")
    p.add_argument("--no-download", action="store_true", help="never download datasets")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.add_argument("--out", default=None, help="write the result JSON here")


def config_from_args(args: argparse.Namespace):
    from .train import TrainConfig

    return TrainConfig(
        dataset=args.dataset, layers=tuple(args.layers), activation=args.activation,
        backend=args.backend, optimizer=args.optimizer, grapes=args.grapes, credit=args.credit,
        lr=args.lr, momentum=args.momentum, batch_size=args.batch_size, epochs=args.epochs,
        seed=args.seed, train_subset=args.train_subset, val_fraction=args.val_fraction,
        dropout=args.dropout, lr_matched=args.lr_matched, bias=args.bias,
        grapes_lower=args.grapes_lower, grapes_bits=args.grapes_bits,
        grapes_ideal_read=args.grapes_ideal_read, data_dir=args.data_dir,
        velocity_bits=args.velocity_bits, velocity_rounding=args.velocity_rounding,
        download=not args.no_download, drift_eval=args.drift_eval, model=args.model,
        time_steps=args.time_steps,
        test_time_steps=args.test_time_steps,
    )


def check_writable(path: str, option: str = "--out") -> None:
    """Fail before training, not after, when the result cannot be written."""
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise ConfigError(option, f"directory does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise ConfigError(option, f"directory is not writable: {parent}")


def write_json(path: str, obj: dict) -> None:
    """Atomic write: a reader never sees a half-written file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def _num(v, spec: str = ".4f") -> str:
    return "n/a" if v is None else format(v, spec)


def cmd_train(args: argparse.Namespace) -> int:
    from .devices import load_device_model
    from .train import run

    cfg = config_from_args(args)
    cfg.check()
    load_device_model(cfg.backend)  # fail fast on a bad --backend
    if args.out:
        check_writable(args.out)

    def on_epoch(rec: dict) -> None:
        if not args.quiet:
            print(f"epoch {rec['epoch']:3d}  loss {_num(rec['train_loss'])}  "
                  f"train {rec['train_acc']:.4f}  test {_num(rec['test_acc'])}  "
                  f"{rec['seconds']:.2f}s", flush=True)

    result = run(cfg, progress=not args.quiet, on_epoch=on_epoch)
    if args.out:
        write_json(args.out, result)
    print(f"status {result['status']}  best test acc {_num(result['best_test_acc'])}  "
          f"final {_num(result['final_test_acc'])}  slowness {_num(result['slowness'], '.3f')}  "
          f"optimizer state {result['optimizer_state_bytes']} B"
          + (f"  -> {args.out}" if args.out else ""))
    if result["status"] == "interrupted":
        print(f"{PROG}: interrupted; partial result kept", file=sys.stderr)
        return 130
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from .devices import list_models, load_device_model

    rows = []
    for path in list_models():
        try:
            m = load_device_model(str(path))
            rows.append((path.stem, m.backend, m.description))
        except (ConfigError, BackendUnavailable) as e:
            rows.append((path.stem, "?", f"(cannot load: {e})"))
    w = max((len(r[0]) for r in rows), default=4)
    for name, kind, desc in rows:
        print(f"{name:<{w}}  {kind:<6}  {desc}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.out, quick=args.quick)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train one network, write result.json")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="SGD vs momentum vs GRAPES on the embedded digits data")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--quick", action="store_true", help="fewer epochs (for smoke tests)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("devices", help="list the shipped device models")
    p.set_defaults(func=cmd_devices)

    for mod in EXTENSIONS:
        __import__(mod, fromlist=["add_cli"]).add_cli(sub)
    return parser


# Modules that add subcommands (each has add_cli(subparsers)); imported when the CLI builds.
EXTENSIONS: list[str] = ["grapes_hw.sweep", "grapes_hw.report", "grapes_hw.continual"]


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"{PROG} {args.command}: error: {e.field}: {e.message}", file=sys.stderr)
        return 2
    except (DataError, BackendUnavailable) as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
