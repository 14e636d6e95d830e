"""``python -m grapes_hw.cli``: the same as the ``grapes-hw`` command."""

import sys

from grapes_hw.cli.main import main

sys.exit(main())
