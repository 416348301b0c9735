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

# The comparison libraries too (loky, joblib, mpire, faster-fifo); without them
# the table compares with the stdlib only.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]' || echo "bench: some comparison libraries did not install; comparing with those present"
	$(BIN)/serentak bench

install: $(STAMP)

# Rebuilt when the build inputs change (the C extension among them).
$(STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=69" wheel
	$(BIN)/python -m pip install --quiet -e '.[dev,dask]'
	touch $(STAMP)

# Every CPython 3.10 to 3.13 found on the machine, each in its own virtualenv
# (.venv-3.X). An interpreter counts when it runs: `python3.X` on PATH, else
# pyenv's build of it (a pyenv shim on PATH fails unless that version is selected).
PYENV_ROOT ?= $(HOME)/.pyenv
# Every version runs even when an earlier one fails; the summary names the failures.
test-versions:
	@found=""; failed=""; for v in 3.10 3.11 3.12 3.13; do \
	  py=""; \
	  for c in python$$v $(PYENV_ROOT)/versions/$$v*/bin/python$$v; do \
	    if $$c -c "import sys" >/dev/null 2>&1; then py=$$c; break; fi; done; \
	  if [ -n "$$py" ]; then found="$$found $$v"; \
	    echo "== Python $$v ($$py)"; \
	    $(MAKE) --no-print-directory pytest PYTHON=$$py VENV=.venv-$$v || failed="$$failed $$v"; \
	  fi; done; \
	echo "== Python versions tested:$${found:- none}; failed:$${failed:- none}"; \
	test -n "$$found" && test -z "$$failed"

clean:
	rm -rf $(VENV) .venv-* build src/*.egg-info src/serentak/*.so
