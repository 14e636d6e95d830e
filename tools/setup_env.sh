#!/usr/bin/env bash
# One-shot, idempotent set-up of everything grapes_hw needs, used by `make demo` and `make test`.
#   1. system packages (libopenblas-dev to build aihwkit, dataset-fashion-mnist for the data),
#      through apt when it is there and we may use it; otherwise a clear message;
#   2. a Python 3.11 virtual environment in .venv with torch pinned to 2.13.0 (constraints.txt);
#   3. IBM aihwkit 1.2.0 built from its sdist against that torch (about 6 minutes once; pip
#      caches the wheel, so later set-ups take seconds);
#   4. grapes_hw itself, editable, with its test extras.
# A stamp file records a hash of the inputs: when nothing changed the script exits at once.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-}
SYS_PKGS="libopenblas-dev dataset-fashion-mnist"
STAMP="$VENV/.grapes_hw-setup"
HASH=$(cat pyproject.toml constraints.txt tools/setup_env.sh | sha256sum | cut -c1-16)

missing_pkgs() {
  local missing=""
  for p in $SYS_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  echo "$missing"
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] && [ -z "$(missing_pkgs 2>/dev/null || true)" ]; then
  exit 0
fi

# ---- 1. system packages -------------------------------------------------------------------
if command -v dpkg-query >/dev/null 2>&1; then
  MISSING=$(missing_pkgs)
  if [ -n "$MISSING" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "setup: installing system packages:$MISSING"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq >/dev/null
      apt-get install -y -qq --no-install-recommends $MISSING >/dev/null
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      echo "setup: installing system packages with sudo:$MISSING"
      sudo -n env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
      sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $MISSING >/dev/null
    else
      echo "setup: WARNING: missing system packages:$MISSING" >&2
      echo "setup: install them as root:  apt-get install$MISSING" >&2
      echo "setup: (libopenblas-dev is needed to build aihwkit; dataset-fashion-mnist holds" >&2
      echo "setup:  Fashion-MNIST, which can also be put in ~/.cache/grapes_hw/fashion-mnist)" >&2
    fi
  fi
else
  echo "setup: no dpkg here: make sure OpenBLAS headers are installed (aihwkit build)." >&2
fi

# ---- 2. virtual environment -----------------------------------------------------------------
if [ -z "$PYTHON" ]; then
  for c in python3.11 python3; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PYTHON=$c; break
    fi
  done
fi
if [ -z "$PYTHON" ]; then
  echo "setup: error: Python 3.11 not found (torch 2.13.0's CPU wheel here is for 3.11)." >&2
  echo "setup: install python3.11 or set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# The aihwkit build calls tools installed in the venv (cmake, ninja, mypy's stubgen).
export PATH="$PWD/$VENV/bin:$PATH"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install -c constraints.txt "torch==2.13.0"
$PIP install -c constraints.txt "setuptools>=77" wheel scikit-build pybind11 ninja cmake mypy \
  numpy scipy requests protobuf tqdm scikit-learn

# ---- 3. aihwkit from source, against this torch ------------------------------------------------
AIHWKIT_OK=1
if ! "$VENV/bin/python" -c 'import aihwkit.simulator.rpu_base' >/dev/null 2>&1; then
  echo "setup: building aihwkit 1.2.0 from source against torch 2.13.0 (about 6 min the first time)"
  # --no-deps: aihwkit lists torchvision, which we neither need nor can import beside this torch.
  if ! $PIP install -c constraints.txt --no-build-isolation --no-deps "aihwkit==1.2.0"; then
    echo "setup: WARNING: aihwkit failed to build; the analog backend will be unavailable." >&2
    echo "setup: it needs libopenblas-dev (apt-get install libopenblas-dev) and a C++ compiler." >&2
    AIHWKIT_OK=0
  fi
fi

# ---- 4. the package ---------------------------------------------------------------------------
$PIP install -c constraints.txt --no-build-isolation -e ".[test]"
if [ "$AIHWKIT_OK" = 1 ]; then
  echo "$HASH" > "$STAMP"   # no stamp without aihwkit: the next set-up tries the build again
  echo "setup: environment ready in $VENV"
else
  echo "setup: environment ready in $VENV, WITHOUT aihwkit (analog backend unavailable)" >&2
fi
