# The two commands a new user needs: `make demo` and `make test`.
# Each creates (or refreshes) a virtualenv in .venv, installs serentak into it
# with what it needs, and runs.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SOURCES := pyproject.toml $(wildcard src/native/*.c src/native/*.h)

.PHONY: demo test lint typecheck pytest bench install clean test-versions

demo: $(STAMP)
	$(BIN)/serentak demo

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/serentak bench

install: $(STAMP)

# Rebuilt when the build inputs change (the C extension among them).
$(STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=69" wheel
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Every CPython 3.10 to 3.13 found on PATH, each in its own virtualenv.
test-versions:
	@set -e; found=0; for v in 3.10 3.11 3.12 3.13; do \
	  if command -v python$$v >/dev/null 2>&1; then found=1; \
	    echo "== Python $$v"; $(MAKE) --no-print-directory pytest PYTHON=python$$v VENV=.venv-$$v; \
	  fi; done; test $$found = 1

clean:
	rm -rf $(VENV) .venv-* build src/*.egg-info src/serentak/*.so
