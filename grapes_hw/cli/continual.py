"""``grapes-hw continual``: its options, importing nothing heavy.

The options live here, not in ``grapes_hw.training.continual`` (which imports torch), so that
``grapes-hw continual -h`` answers at once; the study itself is imported when it runs.
``RULES`` is defined here for the same reason (``--rules`` checks against it) and
re-exported by ``grapes_hw.training.continual``.
"""

from __future__ import annotations

import argparse
import sys

from grapes_hw.config import RULES, default_lr_text


def _csv(kind):
    def parse(s: str):
        parts = [p.strip() for p in s.split(",")]
        if not any(parts):
            raise argparse.ArgumentTypeError(f"{s!r}: expected a comma-separated list")
        if not all(parts):
            raise argparse.ArgumentTypeError(f"{s!r}: an empty item between commas")
        vals = parts
        if kind is int:
            try:
                vals = [int(p) for p in parts]
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{s!r}: expected comma-separated integers") from None
            if any(v < 0 for v in vals):
                raise argparse.ArgumentTypeError(f"{s!r}: must be >= 0")
        if len(set(vals)) != len(vals):  # seed 0 twice (or 0,00) is not two replicates
            raise argparse.ArgumentTypeError(f"{s!r}: an item is listed twice")
        return tuple(vals)
    return parse


def _rules(s: str) -> tuple[str, ...]:
    vals = _csv(str)(s)
    bad = [v for v in vals if v not in RULES]
    if bad:
        raise argparse.ArgumentTypeError(f"{bad[0]!r}: allowed values: {', '.join(RULES)}")
    return vals


def add_cli(subparsers) -> None:
    from grapes_hw.cli.argtypes import (
        layer_list,
        lower_bound,
        nonneg_int,
        positive_float,
        positive_int,
        unit_interval,
    )
    from grapes_hw.data.sources import DATASETS

    p = subparsers.add_parser("continual", help="sequential permuted-pixel tasks: forgetting, "
                                                "SGD vs GRAPES")
    p.add_argument("--dataset", choices=DATASETS, default="digits", help="dataset")
    p.add_argument("--tasks", type=positive_int, default=5,
                   help="number of tasks, the original data included")
    p.add_argument("--k", type=nonneg_int, default=600,
                   help="pixels permuted per task, for 784-pixel images; scaled to the image "
                        "size (the paper also uses 300)")
    p.add_argument("--k-pixels", type=nonneg_int, default=None,
                   help="pixels permuted per task, exact count (overrides --k; default: "
                        "--k scaled)")
    p.add_argument("--epochs-per-task", type=positive_int, default=5,
                   help="training epochs on each task")
    p.add_argument("--rules", type=_rules, default=("sgd", "grapes"),
                   help=f"learning rules compared, comma-separated, from {', '.join(RULES)}: "
                        "'sgd' is --optimizer alone (no GRAPES, whichever optimizer), 'grapes' "
                        "and 'grapes-local' add GRAPES, 'lr-matched' is the paper's control")
    p.add_argument("--backends", type=_csv(str), default=("float32",),
                   help="device models compared, comma-separated (e.g. float32,fixed8; see "
                        "'grapes-hw devices')")
    p.add_argument("--seeds", type=_csv(int), default=(0,), help="seeds, comma-separated")
    p.add_argument("--model", choices=("mlp", "snu", "ssnu"), default="mlp",
                   help="network model")
    p.add_argument("--layers", type=layer_list, default=(256, 256, 256),
                   help="hidden widths, comma-separated")
    p.add_argument("--activation", choices=("relu", "tanh"), default="relu",
                   help="hidden activation")
    p.add_argument("--optimizer", choices=("sgd", "momentum", "nag", "rmsprop", "adam"),
                   default="sgd", help="optimizer")
    p.add_argument("--credit", choices=("bp", "fa", "dfa"), default="bp",
                   help="credit assignment")
    p.add_argument("--lr", type=positive_float, default=None,
                   help=f"learning rate (default: the optimizer's: {default_lr_text()})")
    p.add_argument("--momentum", type=unit_interval, default=0.9,
                   help="momentum coefficient for momentum/nag, in [0, 1)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="minibatch size")
    p.add_argument("--dropout", type=unit_interval, default=0.0, metavar="P",
                   help="dropout probability of hidden nodes, in [0, 1) (mlp only)")
    p.add_argument("--grapes-lower", type=lower_bound, default=1.0,
                   help="lower bound of the GRAPES factor, in [0, 2] or 'none' (unbounded)")
    p.add_argument("--time-steps", type=positive_int, default=20,
                   help="snu/ssnu: rate-coding steps per training sample")
    p.add_argument("--test-time-steps", type=positive_int, default=20,
                   help="snu/ssnu: rate-coding steps at test")
    p.add_argument("--train-subset", type=positive_int, default=None, metavar="N",
                   help="train on a seeded random subset of N samples (default: all)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="read the dataset from DIR, or stop saying what is wrong there "
                        "(default: search $GRAPES_HW_DATA, the cache, /usr/share/datasets)")
    p.add_argument("--no-download", action="store_true", help="never download datasets")
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.add_argument("--out", default="continual_out", help="output folder")
    p.set_defaults(func=cmd_continual)


def cmd_continual(args: argparse.Namespace) -> int:
    from grapes_hw.training.config import TrainConfig
    from grapes_hw.training.continual import ContinualConfig, run_continual

    base = TrainConfig.from_flat(dataset=args.dataset, layers=tuple(args.layers),
                                 activation=args.activation,
                       optimizer=args.optimizer, credit=args.credit, lr=args.lr,
                       momentum=args.momentum, batch_size=args.batch_size,
                       dropout=args.dropout,
                       train_subset=args.train_subset, grapes_lower=args.grapes_lower,
                       model=args.model, time_steps=args.time_steps,
                       test_time_steps=args.test_time_steps, data_dir=args.data_dir,
                       download=not args.no_download)
    cc = ContinualConfig(base=base, n_tasks=args.tasks, k=args.k, k_pixels=args.k_pixels,
                         epochs_per_task=args.epochs_per_task, rules=tuple(args.rules),
                         backends=tuple(args.backends), seeds=tuple(args.seeds))
    from grapes_hw.cli.argtypes import check_options_act

    base.check()
    # an option must act in at least one of the rules' runs (--grapes-lower with sgd alone,
    # --momentum with SGD, --time-steps with an MLP would only be recorded)
    check_options_act(*(cc.rule_config(r, cc.backends[0], cc.seeds[0]) for r in cc.rules))
    from grapes_hw.studies.store import check_out_dir

    out = check_out_dir(args.out, "--out")
    s = run_continual(cc, out, quiet=args.quiet, plots=not args.no_plots)
    for row in s["mean"]:
        aa, fg = row["average_accuracy"], row["mean_forgetting"]
        print(f"{row['backend']:<10} {row['rule']:<12} final mean accuracy over tasks "
              f"{'n/a' if aa is None else f'{aa:.4f}'}  mean forgetting "
              f"{'n/a' if fg is None else f'{fg:.4f}'}")
    for c in s.get("comparisons", []):
        p = c.get("average_accuracy_welch_p")
        a, b = (c["average_accuracy"], c["average_accuracy_baseline"])
        print(f"{c['backend']:<10} {c['rule']} vs {c['baseline']}: final mean accuracy "
              f"{'n/a' if a is None else f'{a:.4f}'} vs {'n/a' if b is None else f'{b:.4f}'}, "
              f"Welch p "
              f"{'n/a' if p is None else f'{p:.3g}'} ({c['n']} and {c['n_baseline']} seeds)")
    print(f"-> {out}/summary.json, {out}/continual.jsonl"
          + ("" if args.no_plots else ", plots"), file=sys.stderr)
    if s.get("interrupted"):
        print(f"interrupted: the {len(s['runs'])} finished runs are kept in {out}; the same "
              "command continues with the others", file=sys.stderr)
        return 130
    return 0


__all__ = ['add_cli', 'cmd_continual']
