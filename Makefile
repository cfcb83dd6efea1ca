# Two entry points: `make demo` (set up, run the main job on a generated sample store)
# and `make test` (set up, run the tests). Both create .venv when it is missing.
PYTHON ?= python3
# `make test` leaves out the long tests (kill loops, real worker kills); .ci/run runs them after it.
PYTEST_ARGS ?= -m "not slow"
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# aml's own modules, compiled to bytecode before a run as an installed package is: with
# PYTHONDONTWRITEBYTECODE set (as on these machines), every process a test starts (the CLI, Celery
# workers) would otherwise compile them all again from source.
SOURCES := aml cli models tasks workers config beat_schedule.py

demo: $(STAMP)
	$(BIN)/python -m compileall -q $(SOURCES)
	$(BIN)/aml demo

test: $(STAMP)
	$(BIN)/python -m compileall -q $(SOURCES)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

check: test lint typecheck

clean:
	rm -rf $(VENV) demo .aml
