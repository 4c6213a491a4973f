# One command to serve, one to test; each makes the virtual environment it needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 7000
ARGS   ?=

.PHONY: serve test check pytest bench bench-smoke clean

$(VENV)/.run-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@ $(VENV)/.run-installed

serve: $(VENV)/.run-installed  ## Run the broker on $(HOST):$(PORT)
	$(PY) -m mqcore_tcp --host $(HOST) --port $(PORT) $(ARGS)

test: check pytest  ## Lint, type-check and run the test suite

check: $(VENV)/.test-installed
	$(PY) -m ruff check .
	$(PY) -m mypy

pytest: $(VENV)/.test-installed
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build *.egg-info
