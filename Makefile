# The two commands of the README: `make demo` and `make test`. Both set up everything first
# (system packages via apt when root, .venv with torch 2.13.0, aihwkit built from source,
# grapes_hw editable); set-up is skipped in a second when nothing changed.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench lint clean

setup:
	@bash tools/setup_env.sh

demo: setup
	$(VENV)/bin/grapes-hw demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/run_all.py

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) demo_out .pytest_cache build *.egg-info
