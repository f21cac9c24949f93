# `make run`: set up, create the demo data, start the Dagster UI on the local default.
# `make test`: set up and run the tests.   `make bench`: the benchmark (not part of the tests).
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

.PHONY: setup run test bench
setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/rivbulk dev

test: $(STAMP)
	$(VENV)/bin/pytest

bench: $(STAMP)
	$(VENV)/bin/python -m benchmarks.run
