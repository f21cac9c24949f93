# `make run`: set up, create the demo data, start the Dagster UI on the local default.
# `make test`: set up and run the tests.   `make bench`: the benchmark (not part of the tests).
# `make test-browser`: the UI in headless Chromium (CI installs Debian's chromium first).
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

.PHONY: setup run test lint test-browser screenshots bench
setup: $(VENV)/.installed-dev

run: $(VENV)/.installed
	$(VENV)/bin/rivbulk dev

# Two workers, the end-to-end tests together on one (rivbulk_pipeline_tests/support/workers.py);
# then the tests marked `alone` (timing read on the gateway's clock), with nothing beside them.
test: $(VENV)/.installed-dev
	$(VENV)/bin/pytest -n 2 -m "not browser and not alone"
	$(VENV)/bin/pytest -m alone

# ruff: the format is checked, not applied (`.venv/bin/ruff format .` applies it), and the lint rules pass.
lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

# The Dagster UI in headless Chromium (Debian's `chromium`: apt-get install -y chromium).
test-browser: $(VENV)/.installed-dev
	$(VENV)/bin/pytest -m browser

# The README's screenshots, taken by the browser test from the real UI over the demo data.
screenshots: $(VENV)/.installed-dev
	RIVBULK_SCREENSHOTS=docs/ui $(VENV)/bin/pytest -m browser

bench: $(VENV)/.installed-dev
	$(VENV)/bin/python -m benchmarks.run
