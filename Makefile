# Two commands set up everything on a fresh machine with only Python 3.11+:
#   make demo   trains the embedded default (scikit-learn's digits as an image folder)
#   make test   runs the test suite (with the tf extra, so the tf.data backend is tested too)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= runs/digits

.PHONY: demo test install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test,tf]"

demo: install
	$(BIN)/python -m imgcls.main --config=configs/digits.py --workdir=$(WORKDIR)

test: install-test
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs
