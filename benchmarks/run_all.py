"""Run every benchmark of this folder with its defaults, one after the other (``make bench``);
the analog one only where aihwkit is installed. Stops at the first that fails."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["bench_float.py", "bench_step_kernels.py", "bench_fixed_point.py",
           "bench_before_after.py", "bench_cnn.py", "bench_analog.py", "bench_sweep_scaling.py"]


def main() -> int:
    for name in SCRIPTS:
        if name == "bench_analog.py" and importlib.util.find_spec("aihwkit") is None:
            print(f"skipping {name}: aihwkit is not installed", flush=True)
            continue
        print(f"== {name}", flush=True)
        rc = subprocess.run([sys.executable, str(HERE / name)]).returncode
        if rc != 0:
            print(f"{name} failed with exit status {rc}", file=sys.stderr)
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
