# One command to serve, one to test; each makes the virtual environment it needs.
#
# `make test` is what CI runs (.ci/run): ruff and mypy once, on the newest
# Python found, then pytest on the oldest and the newest supported Python
# found on the machine (each in its own .venv-X.Y, made on first use): the
# oldest with the pure-Python core, the newest with the core compiled by
# mypyc (setup.py, MQCORE_COMPILE=1), so both are tested; with one version
# found, only the pure core. COMPILE=0 tests the pure core everywhere.
# Versions missing from the machine are skipped, never an error: with none
# of them, plain `python3` runs everything (.venv-3); the summary says which ran.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 7000
ARGS   ?=
# Where `make serve` keeps topics' indices and caches across restarts: one
# directory per port, so two `make serve PORT=...` can run side by side
# (a data directory serves one server at a time). `make serve DATA_DIR=`
# serves in memory instead.
DATA_DIR ?= ./data/$(PORT)
STORE  := $(if $(DATA_DIR),--data-dir $(DATA_DIR),--in-memory)

# The supported versions to look for (requires-python >= 3.10), oldest first.
SUPPORTED ?= 3.10 3.11 3.12 3.13 3.14
# `VERSION=PATH` of the oldest and newest found (see .ci/pythons.py), or
# `3=PATH` of python3 when none is; worked out once, and only when needed.
FOUND = $(eval FOUND := $$(shell $(PYTHON) .ci/pythons.py $(SUPPORTED)))$(FOUND)
TEST_VERSIONS = $(foreach found,$(FOUND),$(firstword $(subst =, ,$(found))))
NEWEST = $(lastword $(TEST_VERSIONS))
python_for = $(lastword $(subst =, ,$(filter $(1)=%,$(FOUND))))
PYTEST_ARGS ?=
COMPILE ?= 1
# The version whose suite runs the compiled core (none when one version is found).
COMPILED = $(if $(filter 1,$(COMPILE)),$(if $(word 2,$(TEST_VERSIONS)),$(NEWEST)))
# The editable install builds the compiled core in place (mqcore/*.so, for
# that Python only): rebuilt whenever a source of the core changes.
CORE_SOURCES := $(wildcard mqcore/*.py) setup.py

.PHONY: serve test check lint pytest pytest-all pure-core bench clean

$(VENV)/.run-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@ $(VENV)/.run-installed

# .venv-3.10, .venv-3.13, ...: one per Python version `make test` runs on.
.venv-%/.test-installed: pyproject.toml
	$(call python_for,$*) -m venv .venv-$*
	.venv-$*/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

.venv-%/.compiled: .venv-%/.test-installed $(CORE_SOURCES)
	@echo "== compiling the core with mypyc for $$(.venv-$*/bin/python -V)"
	rm -f mqcore/*.cpython-$(subst .,,$*)-*.so *__mypyc.cpython-$(subst .,,$*)-*.so
	MQCORE_COMPILE=1 .venv-$*/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# No compiled core anywhere: the pure one is what every suite runs.
pure-core:
	rm -f mqcore/*.so *__mypyc*.so .venv-*/.compiled

serve: $(VENV)/.run-installed  ## Run the broker on $(HOST):$(PORT), durable in $(DATA_DIR)
	$(PY) -m mqcore_tcp --host $(HOST) --port $(PORT) $(STORE) $(ARGS)

test: lint pytest-all  ## Lint and type-check once, run the suite on the oldest and newest Python

lint: .venv-$(NEWEST)/.test-installed
	@echo "== ruff and mypy on $$(.venv-$(NEWEST)/bin/python -V)"
	.venv-$(NEWEST)/bin/python -m ruff check .
	.venv-$(NEWEST)/bin/python -m mypy

# Every version runs even when one fails; pytest's status 5 (no tests
# collected) is a failure too, since a suite that ran nothing proved nothing.
# The versions run side by side (every test takes free ports and its own
# temporary files), each into build/pytest-X.Y.log, printed in order at the end.
# MQCORE_EXPECT_COMPILED tells the suite which core it must find (tests/project).
pytest-all: $(foreach v,$(TEST_VERSIONS),.venv-$(v)/.test-installed) $(if $(COMPILED),.venv-$(COMPILED)/.compiled,pure-core)
	@mkdir -p build; for v in $(TEST_VERSIONS); do \
	  expect=0; if [ "$$v" = "$(COMPILED)" ]; then expect=1; fi; \
	  ( MQCORE_EXPECT_COMPILED=$$expect .venv-$$v/bin/python -m pytest $(PYTEST_ARGS) > build/pytest-$$v.log 2>&1; \
	    echo $$? > build/pytest-$$v.status ) & \
	done; wait; \
	failed=""; for v in $(TEST_VERSIONS); do \
	  core=pure; if [ "$$v" = "$(COMPILED)" ]; then core=compiled; fi; \
	  echo "== pytest on $$(.venv-$$v/bin/python -V), $$core core"; cat build/pytest-$$v.log; \
	  status=$$(cat build/pytest-$$v.status); \
	  if [ $$status -eq 5 ]; then echo "== pytest on $$v collected no tests"; fi; \
	  if [ $$status -ne 0 ]; then failed="$$failed $$v(exit $$status)"; fi; \
	done; \
	echo "== pytest ran on: $(FOUND)"; \
	if [ -n "$$failed" ]; then echo "== FAILED on:$$failed"; exit 1; fi

check: $(VENV)/.test-installed  ## Lint and type-check in .venv (the development environment)
	$(PY) -m ruff check .
	$(PY) -m mypy

pytest: $(VENV)/.test-installed  ## Run the suite once, in .venv
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.test-installed  ## Run the benchmarks (see benchmarks/README.md)
	$(PY) -m benchmarks.run $(ARGS)

clean:
	rm -rf $(VENV) .venv-* build *.egg-info mqcore/*.so *__mypyc*.so
