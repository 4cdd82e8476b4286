# flipsweep: `make quick` sets up and runs the small sweep; `make test` sets up and runs lint + every test;
# `make check` lint + the fast tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Tests run in 2 worker processes (pytest-xdist): each test is single-threaded, so two keep a 2-core machine
# busy. Tests that share a Ray, a server or a rendered corpus stay in one worker (their `xdist_group` mark).
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup

.PHONY: setup quick check test lint browser espeak ui bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

quick: setup  ## a small sweep on the embedded defaults (local Ray, MLflow in ./mlflow.db)
	$(BIN)/python -m sweep.run search_spaces/quick.yaml

browser:  ## Debian's chromium, for the MLflow-UI browser test
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium unavailable: the MLflow-UI browser test will be skipped"

espeak:  ## Debian's espeak-ng, which speaks the rendered test corpus (trainers/speech/speak.py)
	@command -v espeak-ng >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null) \
		|| echo "espeak-ng unavailable: the speech tests will be skipped"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

check: setup lint  ## the edit loop: lint, then every test not marked slow (about 40 s on 2 cores)
	$(PYTEST) -m "not slow"

test: setup browser espeak lint  ## lint, then the whole suite, and its 25 slowest tests
	$(PYTEST) --durations=25

ui: setup  ## the MLflow UI on the embedded store, http://127.0.0.1:5000
	@echo "MLflow UI: http://127.0.0.1:5000/#/experiments?workflowType=machine_learning (the model-training view)"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

bench: setup espeak  ## benchmarks: one trial, speech data, then sweep efficiency
	$(BIN)/python -m benchmarks.trial
	$(BIN)/python -m benchmarks.long_utterances
	$(BIN)/python -m benchmarks.speech
	$(BIN)/python -m benchmarks.sweep

clean:
	rm -rf flipsweep_results mlflow.db optuna.db mlruns
