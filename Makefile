# Two commands do all the set-up (see README):
#   make run DATA=<folder|zip|url>   venv + pinned deps, then `mlflow run . -e main` on DATA
#                                    (no DATA: the MLproject default, the course's zip)
#   make test                        venv + pinned deps, then the test suite
#   make system-deps                 the Debian packages of the browser, exiftool and Spark tests
# Both are idempotent: the venv is rebuilt only when requirements.txt or pyproject.toml change.

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?=
ENTRY ?= main
EXPERIMENT ?= landmark
PYTEST_ARGS ?=
# The registry's champion (landmark/config.py is the one home of that URI).
MODEL ?= $(shell $(BIN)/python -c 'from landmark.config import CHAMPION_URI; print(CHAMPION_URI)')
PORT ?= 5001
# A local DATA path is made absolute: `mlflow run` executes in this folder, not yours.
DATA_ARG := $(if $(wildcard $(DATA)),$(abspath $(DATA)),$(DATA))
# `mlflow run --env-manager local` runs `python` from PATH: it must be the venv's.
export PATH := $(BIN):$(PATH)

.PHONY: venv run test system-deps lint benchmark ui serve app clean-venv

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/mlflow run . -e $(ENTRY) --env-manager local --experiment-name $(EXPERIMENT) \
		$(if $(DATA),-P data=$(DATA_ARG)) $(if $(PARAMS),$(foreach p,$(PARAMS),-P $(p)))

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

system-deps:
	scripts/system-deps

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

benchmark: $(STAMP)
	$(BIN)/python benchmarks/data_loading.py $(if $(DATA),--data $(DATA_ARG))

ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db

serve: $(STAMP)
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} \
		$(BIN)/mlflow models serve -m $(MODEL) --env-manager local -h 127.0.0.1 -p $(PORT)

app: $(STAMP)
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} $(BIN)/landmark app

clean-venv:
	rm -rf $(VENV)
