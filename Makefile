# Two commands set everything up on a fresh machine: `make run` and `make test` (inner loop: `make test-fast`).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export MLFLOW_DISABLE_TELEMETRY ?= true
export DVC_NO_ANALYTICS ?= 1
export DO_NOT_TRACK ?= 1

.PHONY: install run test test-fast lint bench clean study calibrate

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# ARGS: flow options, e.g. make run ARGS="-S search.hypergrad=first_order" or ARGS="--preset configs/darts.yaml";
# a run with -S / --preset / --name is a DVC experiment (dvc exp show) and leaves params.yaml as it was
ARGS ?=
run: $(STAMP)
	@start=$$(date +%s); \
	PATH="$(CURDIR)/$(BIN):$$PATH" OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m flows $(ARGS); \
	rc=$$?; echo "make run: $$(( $$(date +%s) - start )) s wall"; exit $$rc

# a study: arms x search seeds of search -> derive -> retrain trials on a local Dask cluster, one report
# (reports/<study>/report.md). STUDY: the spec; ARGS: e.g. ARGS="-S retrain.epochs=2" or "--address tcp://host:8786"
STUDY ?= configs/study.yaml
study: $(STAMP)
	@start=$$(date +%s); \
	PATH="$(CURDIR)/$(BIN):$$PATH" OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} \
	PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=$${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-120} \
	$(BIN)/python -m flows.study $(STUDY) $(ARGS); \
	rc=$$?; echo "make study: $$(( $$(date +%s) - start )) s wall"; exit $$rc

# the proxy calibration that chose the default study's evaluation protocol (reports/calibration/<name>/):
# Kendall's tau to a longer, wider retraining, ICC and detectable difference, all on validation
CALIBRATION ?= configs/calibration.yaml
calibrate: $(STAMP)
	@start=$$(date +%s); \
	PATH="$(CURDIR)/$(BIN):$$PATH" OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} \
	PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=$${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-120} \
	$(BIN)/python -m flows.calibrate $(CALIBRATION) $(ARGS); \
	rc=$$?; echo "make calibrate: $$(( $$(date +%s) - start )) s wall"; exit $$rc

test: $(STAMP)
	$(BIN)/ruff check ilnas stages flows tests bench
	# two workers, one test file each at a time (module fixtures stay on one worker): most tests wait on
	# subprocesses, servers and one-thread torch, so 2 cores carry two files at once
	$(BIN)/python -m pytest -q -x -n 2 --dist loadfile --durations=15 tests

# the inner loop: the tests not marked slow (tests/conftest.py: SLOW_FILES), same two workers; CI runs `make test`
test-fast: $(STAMP)
	$(BIN)/ruff check ilnas stages flows tests bench
	$(BIN)/python -m pytest -q -x -n 2 --dist loadfile --durations=10 -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check ilnas stages flows tests bench

bench: $(STAMP)
	$(BIN)/python bench/search_step.py
	$(BIN)/python bench/retrain_step.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
