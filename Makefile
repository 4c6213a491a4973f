# One command to serve, one to test; each makes the virtual environment it needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 7000
ARGS   ?=
# Where `make serve` keeps topics' indices and caches across restarts;
# `make serve DATA_DIR=` serves in memory instead.
DATA_DIR ?= ./data
STORE  := $(if $(DATA_DIR),--data-dir $(DATA_DIR),--in-memory)

.PHONY: serve test check pytest bench clean

$(VENV)/.run-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@ $(VENV)/.run-installed

serve: $(VENV)/.run-installed  ## Run the broker on $(HOST):$(PORT), durable in $(DATA_DIR)
	$(PY) -m mqcore_tcp --host $(HOST) --port $(PORT) $(STORE) $(ARGS)

test: check pytest  ## Lint, type-check and run the test suite

check: $(VENV)/.test-installed
	$(PY) -m ruff check .
	$(PY) -m mypy

pytest: $(VENV)/.test-installed
	$(PY) -m pytest

bench: $(VENV)/.test-installed  ## Run the benchmarks (see benchmarks/README.md)
	$(PY) -m benchmarks.run $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
