# Two commands set up everything on a fresh machine with only Python 3.11+:
#   make demo   trains the embedded default (scikit-learn's digits as an image folder)
#   make test   checks the formatting and lint (ruff), then runs the test suite (with the tf and
#               export extras, so the tf.data backend and every export format are tested too;
#               TEST_WORKERS=0 runs it in one process);
#               make format fixes what ruff can
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= runs/digits

.PHONY: demo test lint format install install-test browser clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test,tf,export]"

demo: install
	$(BIN)/python -m imgcls.main --config=configs/digits.py --workdir=$(WORKDIR)

# Debian's chromium and shellcheck for the report and launch-script tests (skipped without them).
browser:
	@command -v chromium >/dev/null 2>&1 && command -v shellcheck >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium shellcheck >/dev/null) ; } || \
	  echo "chromium or shellcheck is not installed: the tests that need them will be skipped"

lint: install-test
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

# The test files run in TEST_WORKERS processes (pytest-xdist), each file's tests in one of them, so
# module fixtures are built once; on 2 cores two workers halve the suite's time (JAX compiles on one).
TEST_WORKERS ?= 2

test: install-test browser lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist=loadfile $(PYTEST_ARGS)

format: install-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) runs
