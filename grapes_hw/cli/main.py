"""Command-line interface: ``grapes-hw train | demo | devices | sweep | report | continual``.

Bad input exits with status 2 and a message naming the option and the allowed values,
never a traceback. A run's result is written even when it diverges or is interrupted.

Building the parser imports nothing heavy (no torch, numba, aihwkit): ``-h`` of every
command answers at once. A command's implementation is imported when it runs, and the
options of commands defined in other modules (``EXTENSIONS``) are added only when that
command is chosen.

Over 400 lines: the ``train`` command's ~40 options with their help texts; the other
commands' options are in their own modules (``cli/sweep.py``, ...).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import re
import signal
import sys
import threading
from pathlib import Path

from grapes_hw.cli.argtypes import (
    check_options_act,
    layer_list,
    lower_bound,
    nonneg_int,
    positive_float,
    positive_int,
    unit_interval,
)
from grapes_hw.errors import BackendUnavailable, ConfigError, DataError

PROG = "grapes-hw"


class _Parser(argparse.ArgumentParser):
    """argparse, but errors print 'grapes-hw CMD: error: ...' and exit 2 (its default)."""


def _show_default(v) -> str:
    if isinstance(v, (tuple, list)):
        return ",".join(str(x) for x in v)
    return str(v)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows every option's default: ``(default: X)`` is appended unless the help
    already names it (options whose unset value means "all", "auto", ... say so in their
    help; others show ``none``); flags (``store_true``) have none. Allowed values appear as
    argparse's ``{a,b,c}``. Descriptions and epilogs are printed as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.nargs == 0 or not action.option_strings
                or action.default is argparse.SUPPRESS or re.search(r"\bdefault\b", text)):
            return text
        shown = "none" if action.default is None else _show_default(action.default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from grapes_hw.config import default_lr_text
    from grapes_hw.data.sources import DATASETS

    p.add_argument("--dataset", choices=DATASETS, default="digits",
                   help="dataset (digits ships with scikit-learn; the others are read from "
                        "--data-dir or downloaded)")
    p.add_argument("--layers", type=layer_list, default=(256, 256, 256),
                   help="hidden widths, comma-separated")
    p.add_argument("--activation", choices=("relu", "tanh"), default="relu",
                   help="hidden activation")
    p.add_argument("--backend", default="float32",
                   help="device model: a name listed by 'grapes-hw devices' (see "
                        "'grapes-hw devices NAME' for its parameters) or a path to a TOML file")
    p.add_argument("--optimizer", choices=("sgd", "momentum", "nag", "rmsprop", "adam"),
                   default="sgd", help="optimizer (nag: Nesterov momentum)")
    p.add_argument("--grapes", choices=("off", "local", "propagating"), default="off",
                   help="GRAPES modulation of the error signal")
    p.add_argument("--credit", choices=("bp", "fa", "dfa"), default="bp",
                   help="credit assignment: backprop, feedback or direct feedback alignment")
    p.add_argument("--lr", type=positive_float, default=None,
                   help=f"learning rate, a positive number (default: the optimizer's: "
                        f"{default_lr_text()}; result.json records the rate used as "
                        f"config.lr and why as config.lr_source)")
    p.add_argument("--momentum", type=unit_interval, default=0.9,
                   help="momentum coefficient for momentum/nag, in [0, 1)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="minibatch size")
    p.add_argument("--epochs", type=positive_int, default=10,
                   help="passes over the training set")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="seed of initialisation, data order, dropout, subsets and noise")
    p.add_argument("--train-subset", type=positive_int, default=None, metavar="N",
                   help="train on a seeded random subset of N samples (default: all)")
    p.add_argument("--val-fraction", type=unit_interval, default=0.0,
                   help="fraction of the training set held out for validation, in [0, 1)")
    p.add_argument("--dropout", type=unit_interval, default=0.0, metavar="P",
                   help="dropout probability of hidden nodes, in [0, 1)")
    p.add_argument("--lr-matched", action="store_true",
                   help="SGD control: lr times the mean GRAPES factor at initialisation")
    p.add_argument("--bias", action="store_true", help="add a (digital) bias to every layer")
    p.add_argument("--grapes-lower", type=lower_bound, default=1.0,
                   help="lower bound of the GRAPES factor, in [0, 2] or 'none' (unbounded)")
    p.add_argument("--grapes-bits", type=positive_int, default=None,
                   help="hold the GRAPES factor at this many bits (default: full precision)")
    p.add_argument("--grapes-ideal-read", action="store_true",
                   help="GRAPES importance from ideal stored weights, not the hardware read")
    p.add_argument("--model", choices=("mlp", "snu", "ssnu", "cnn"), default="mlp",
                   help="mlp, spiking neural units (snu) / soft SNUs (ssnu) with BPTT, or a "
                        "convolutional network (cnn: --conv, then --layers as the dense head)")
    p.add_argument("--conv", default=None, metavar="SPEC",
                   help="cnn: conv layers CHANNELS:KERNEL[:POOL], comma-separated; stride 1, "
                        "'same' padding (KERNEL // 2, odd kernels), each followed by the "
                        "activation and 2x2 pooling, POOL max (the default), avg or none "
                        "(default with --model cnn: 16:5,32:5)")
    p.add_argument("--time-steps", type=positive_int, default=20, metavar="N",
                   help="snu/ssnu: rate-coding steps per training sample")
    p.add_argument("--test-time-steps", type=positive_int, default=20, metavar="N",
                   help="snu/ssnu: rate-coding steps at test (the paper used 300)")
    p.add_argument("--velocity-bits", type=positive_int, default=None, metavar="BITS",
                   help="momentum/nag velocity in BITS-bit fixed point (2..32), per-tensor "
                        "power-of-two scale (default: float32)")
    p.add_argument("--velocity-rounding", choices=("nearest", "stochastic"), default="nearest",
                   help="rounding of the fixed-point velocity")
    p.add_argument("--drift-eval", action="store_true",
                   help="analog inference tiles: after training, test after 1 s, 1 h, 1 day "
                        "and 1 year of PCM drift, with drift compensation on and off")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="read the dataset from DIR (or DIR/NAME, DIR/FashionMNIST/raw, "
                        "DIR/MNIST/raw), or stop saying which file is missing or damaged there "
                        "(default: $GRAPES_HW_DATA/NAME, the download cache, "
                        "/usr/share/datasets/NAME, then download)")
    p.add_argument("--no-download", action="store_true", help="never download datasets")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.add_argument("--out", default=None,
                   help="write the result JSON here; an existing file is replaced only by a "
                        "rerun of the same settings (default: not written)")


def config_from_args(args: argparse.Namespace):
    from grapes_hw.training.config import TrainConfig

    return TrainConfig.from_flat(
        dataset=args.dataset, layers=tuple(args.layers), activation=args.activation,
        backend=args.backend, optimizer=args.optimizer, grapes=args.grapes, credit=args.credit,
        lr=args.lr, momentum=args.momentum, batch_size=args.batch_size, epochs=args.epochs,
        seed=args.seed, train_subset=args.train_subset, val_fraction=args.val_fraction,
        dropout=args.dropout, lr_matched=args.lr_matched, bias=args.bias,
        grapes_lower=args.grapes_lower, grapes_bits=args.grapes_bits,
        grapes_ideal_read=args.grapes_ideal_read, data_dir=args.data_dir,
        velocity_bits=args.velocity_bits, velocity_rounding=args.velocity_rounding,
        download=not args.no_download, drift_eval=args.drift_eval, model=args.model,
        conv=args.conv,
        time_steps=args.time_steps,
        test_time_steps=args.test_time_steps,
    )


def check_result_out(path: str, cfg, option: str = "--out") -> None:
    """Before training: the result can be written to ``path``, and writing it loses nothing.
    An existing file is replaced only when it is the result of the same settings (a rerun);
    another run's result, or a file that is no result, is refused."""
    from grapes_hw.studies.keys import config_difference, config_to_dict
    from grapes_hw.studies.store import check_out_file

    p = check_out_file(path, option)
    if not p.exists():
        return
    try:
        old = json.loads(p.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        old = None
    if not (isinstance(old, dict) and isinstance(old.get("config"), dict)):
        raise ConfigError(option, f"{p} exists and is not a grapes-hw result; remove it or "
                                  "choose another file")
    diff = config_difference(old["config"], config_to_dict(cfg))
    if diff:
        raise ConfigError(option, f"{p} holds the result of other settings ({diff}); remove "
                                  "it or choose another file")


def write_json(path: str, obj: dict) -> None:
    """Atomic write: a reader never sees a half-written file."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # a failed write leaves no stray temporary file
            os.remove(tmp)


def _num(v, spec: str = ".4f") -> str:
    return "n/a" if v is None else format(v, spec)


def cmd_train(args: argparse.Namespace) -> int:
    from grapes_hw.backends.registry import load_device_model
    from grapes_hw.training.train import run

    cfg = config_from_args(args)
    cfg.check()
    check_options_act(cfg)
    load_device_model(cfg.device.backend)  # fail fast on a bad --backend
    if args.out is not None:
        check_result_out(args.out, cfg)

    def on_epoch(rec: dict) -> None:
        if not args.quiet:
            print(f"epoch {rec['epoch']:3d}  loss {_num(rec['train_loss'])}  "
                  f"train {rec['train_acc']:.4f}  test {_num(rec['test_acc'])}  "
                  f"{rec['seconds']:.2f}s", flush=True)

    result = run(cfg, progress=not args.quiet, on_epoch=on_epoch)
    if args.out:
        write_json(args.out, result)
    c = result["config"]
    print(f"status {result['status']}  best test acc {_num(result['best_test_acc'])}  "
          f"final {_num(result['final_test_acc'])}  slowness {_num(result['slowness'], '.3f')}  "
          f"optimizer state {result['optimizer_state_bytes']} B  "
          f"lr {c['lr']:g} ({c['lr_source']})"
          + (f"  -> {args.out}" if args.out else ""))
    if result["status"] == "interrupted":
        print(f"{PROG}: interrupted; partial result kept", file=sys.stderr)
        return 130
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from grapes_hw.backends.registry import BACKEND_KINDS, list_models, load_device_model

    if args.name is not None:
        print(describe_device(load_device_model(args.name, option="NAME")))
        return 0
    groups: dict[str, list[tuple[str, str]]] = {k: [] for k in BACKEND_KINDS}
    broken: list[tuple[str, str]] = []
    for path in list_models():  # naturally sorted: fixed2 < fixed3 < fixed10
        try:
            m = load_device_model(str(path))
            groups.setdefault(m.backend, []).append((path.stem, m.description))
        except (ConfigError, BackendUnavailable) as e:
            broken.append((path.stem, f"(cannot load: {e})"))
    w = max((len(n) for rows in (*groups.values(), broken) for n, _ in rows), default=4)
    sections = [(f"{kind}: {BACKEND_KINDS[kind].summary}" if kind in BACKEND_KINDS else kind,
                 rows) for kind, rows in groups.items() if rows]
    if broken:
        sections.append(("cannot load", broken))
    for i, (title, rows) in enumerate(sections):
        print(("\n" if i else "") + title)
        for name, desc in rows:
            print(f"  {name:<{w}}  {desc}")
    print(f"\n'{PROG} devices NAME' shows one model's parameters, with units and citation.")
    return 0


def _toml_value(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return str(v)


def _describe_table(title: str, obj, given: dict) -> list[str]:
    """``[title]`` and every field of dataclass ``obj``: value, whether the file set it, and
    its docstring (which states the unit)."""
    import dataclasses
    import textwrap

    from grapes_hw.config import field_docs

    docs = field_docs(type(obj))
    lines = [f"[{title}]"]
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        origin = "" if f.name in given else "  (default)"
        if isinstance(v, dict):
            lines.append(f"  {f.name} = {{}}{origin}" if not v else f"  {f.name}:{origin}")
            lines += [f"      {json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()]
        else:
            lines.append(f"  {f.name} = {_toml_value(v)}{origin}")
        doc = docs.get(f.name, "").replace("``", "")  # reST literals read as plain text
        if doc:
            lines += textwrap.wrap(doc, width=92, initial_indent="      ",
                                   subsequent_indent="      ")
    return lines


def describe_device(m) -> str:
    """A device model's resolved parameters as text: every field of its backend's table and
    of its noise model, with the value used (defaults marked), the field's documentation
    (units) and the citation."""
    import tomllib

    from grapes_hw.backends.registry import BACKEND_KINDS

    raw: dict = {}
    if m.path and Path(m.path).is_file():
        with open(m.path, "rb") as f:
            raw = tomllib.load(f)
    kind = BACKEND_KINDS.get(m.backend)
    lines = [f"{m.name}  ({m.path})" if m.path else m.name,
             f"  description: {m.description}",
             f"  backend:     {m.backend}" + (f" ({kind.summary})" if kind else ""),
             f"  citation:    {m.citation or 'none given'}",
             ""]
    lines += _describe_table(m.backend, m.params, raw.get(m.backend, {}))
    lines.append("")
    if m.noise is None:
        lines.append("[noise]  none (no noise model: reads and writes are the backend's own)")
    else:
        lines += _describe_table("noise", m.noise, raw.get("noise", {}))
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    from grapes_hw.cli.demo import run_demo

    return run_demo(args.out, quick=args.quick)


class _SubcommandsAction(argparse._SubParsersAction):
    """Subcommands whose options are added when the subcommand is chosen (``add_lazy``), so
    that building the parser -- and ``grapes-hw -h`` or ``grapes-hw train -h`` -- imports
    none of the modules defining them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pending: dict[str, str] = {}

    def add_lazy(self, name: str, module: str, help: str) -> None:
        """Subcommand ``name`` whose options ``module.add_cli(subparsers)`` adds."""
        self.add_parser(name, help=help)
        self._pending[name] = module

    def __call__(self, parser, namespace, values, option_string=None):
        module = self._pending.pop(values[0], None) if values else None
        if module is not None:
            importlib.import_module(module).add_cli(_Into(self._name_parser_map[values[0]]))
        super().__call__(parser, namespace, values, option_string)


class _Into:
    """The ``subparsers`` an extension's ``add_cli`` is given: its ``add_parser(name, ...)``
    returns the subcommand's parser created up front."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        if name != self.parser.prog.split()[-1]:
            raise ValueError(f"add_cli added subcommand {name!r}, registered as "
                             f"{self.parser.prog.split()[-1]!r} in grapes_hw.cli.main.EXTENSIONS")
        for key in ("description", "epilog", "usage"):
            if kwargs.get(key) is not None:
                setattr(self.parser, key, kwargs[key])
        return self.parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                action=_SubcommandsAction, title="commands",
                                metavar="COMMAND")
    # every subcommand's -h shows its defaults (HelpFormatter)
    sub.add_parser = functools.partial(sub.add_parser, formatter_class=HelpFormatter)

    p = sub.add_parser("train", help="train one network, write result.json",
                       description="Train one network and print (or --out: write) its "
                                   "result.json.")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="SGD vs momentum vs GRAPES on the embedded digits data")
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--quick", action="store_true", help="fewer epochs (for smoke tests)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("devices", help="list the device models, or show one's parameters",
                       description="Without NAME: the shipped device models, grouped by "
                                   "backend kind.\nWith NAME: that model's resolved parameters "
                                   "(every field: its value, unit and meaning)\nand its "
                                   "citation.")
    p.add_argument("name", nargs="?", default=None, metavar="NAME",
                   help="a shipped model name (e.g. fixed6) or a path to a TOML file")
    p.set_defaults(func=cmd_devices)

    for ext in EXTENSIONS:
        if isinstance(ext, str):  # a module whose add_cli(subparsers) runs now (must be light)
            importlib.import_module(ext).add_cli(sub)
        else:
            sub.add_lazy(*ext)
    return parser


DESCRIPTION = (f"{PROG}: train networks with SGD, momentum, Nesterov, RMSprop or Adam, with or\n"
               "without GRAPES, on float, fixed-point and analog (PCM) weights; run studies and\n"
               "report them.")
EPILOG = f"""first steps:
  {PROG} demo --quick           SGD vs momentum vs GRAPES on digits (about a minute)
  {PROG} train --epochs 5       one run on digits, float32 weights, SGD at lr 0.1
  {PROG} devices                the device models; '{PROG} devices fixed6' shows one
  {PROG} COMMAND -h             a command's options, their defaults and allowed values"""

# Subcommands defined in other modules: (name, module, one-line help). The module's
# add_cli(subparsers) runs only when that subcommand is chosen, so the other commands' help
# does not import it; add_cli must add exactly that subcommand. (A plain module name is
# imported when the parser is built: only for modules that import nothing heavy.)
EXTENSIONS: list[tuple[str, str, str] | str] = [
    ("sweep", "grapes_hw.cli.sweep", "run a study (a grid of runs), resumable, in parallel"),
    ("report", "grapes_hw.cli.report", "write report.md, CSV tables and plots of a sweep folder"),
    ("compare", "grapes_hw.cli.compare",
     "side-by-side table of runs (result.json, runs.jsonl): differing settings, metrics"),
    ("continual", "grapes_hw.cli.continual",
     "sequential permuted-pixel tasks: forgetting, SGD vs GRAPES"),
]


def _version() -> str:
    from grapes_hw._version import __version__

    return __version__


def option_for(parser: argparse.ArgumentParser, command: str, field: str) -> str:
    """The command's option for a library error's field: the library names Python fields
    (``grapes_lower``), the CLI says ``--grapes-lower`` where the command has that option; a
    study key (``axes.lr``), a device-file key or a name already spelt as a flag stays."""
    if field.startswith("-"):
        return field
    flag = "--" + field.replace("_", "-")
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        sub = action.choices.get(command)
        if sub is not None and flag in sub._option_string_actions:
            return flag
    return field


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is a failed allocation (Python's MemoryError, or torch's allocator)."""
    return isinstance(e, MemoryError) or "can't allocate memory" in str(e) \
        or "DefaultCPUAllocator" in str(e)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # SIGTERM (kill, a batch scheduler, a session ending) stops like Ctrl-C: a sweep stops
    # its workers, a training run keeps its partial result; exit status 130.
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if on_main else None
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"{PROG} {args.command}: error: {option_for(parser, args.command, e.field)}: "
              f"{e.message}", file=sys.stderr)
        return 2
    except (DataError, BackendUnavailable) as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.filename is None:  # not a path the user gave: a real failure, with traceback
            raise
        # a path that cannot be read or written (a folder where a file goes, no permission):
        # what went wrong and where, not a traceback
        print(f"{PROG} {args.command}: error: {e.filename}: {e.strerror or e}",
              file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        # a model, a minibatch or a dataset larger than this machine's memory: the sizes the
        # user chose, not a bug; say which options set them
        print(f"{PROG} {args.command}: error: out of memory: {_first_line(e)}; the sizes "
              "come from --layers, --conv, --batch-size and the dataset (or the study's "
              "settings): choose smaller ones", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
