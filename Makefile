# `make run`: set up, create the demo data, start the Dagster UI on the local default.
# `make test`: set up and run the tests.   `make bench`: the benchmark (not part of the tests).
VENV ?= .venv
PYTHON ?= python3

$(VENV)/bin/pip:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/pip
	$(VENV)/bin/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

.PHONY: setup run test bench
setup: $(VENV)/.installed-dev

run: $(VENV)/.installed
	$(VENV)/bin/rivbulk dev

test: $(VENV)/.installed-dev
	$(VENV)/bin/pytest

bench: $(VENV)/.installed-dev
	$(VENV)/bin/python -m benchmarks.run
