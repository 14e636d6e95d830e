"""The ``grapes-hw`` command: ``main`` parses the arguments and runs a subcommand; each
subcommand's options live in its own module here (``sweep``, ``report``, ``compare``,
``continual``), imported only when that subcommand is chosen."""

from grapes_hw.cli.main import main

__all__ = ["main"]
