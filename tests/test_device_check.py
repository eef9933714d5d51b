"""scripts/device_check.sh / .py without a GPU: one clear line and a non-zero exit, fast; the checks'
Python run on the CPU (dry mode); the greedy comparison's verdicts. (The greedy check against vLLM
on the CPU is in tests_vllm/test_device_check.py.)"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import time

import pytest

from scoder_lib.core.config import REPO_ROOT

SCRIPT_SH = REPO_ROOT / "scripts" / "device_check.sh"
SCRIPT_PY = REPO_ROOT / "scripts" / "device_check.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules["device_check"] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("nvidia_smi", [None, "#!/bin/sh\nexit 9\n", "#!/bin/sh\necho 'No devices were found'\n"])
def test_shell_script_fails_in_one_line_without_a_gpu(tmp_path, nvidia_smi):
    """No nvidia-smi, or one that finds no GPU: one FAIL line, exit 2, before any install."""
    bin_dir = tmp_path / "bin"  # only what the script needs before its GPU test: no python, no pip
    bin_dir.mkdir()
    for tool in ("dirname", "grep"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    if nvidia_smi:
        (bin_dir / "nvidia-smi").write_text(nvidia_smi)
        (bin_dir / "nvidia-smi").chmod(0o755)
    start = time.monotonic()
    done = subprocess.run(
        ["/bin/bash", str(SCRIPT_SH)], capture_output=True, text=True, env={"PATH": str(bin_dir)}, timeout=60
    )
    assert time.monotonic() - start < 10
    assert done.returncode == 2, done.stderr
    assert done.stdout.splitlines() == [done.stdout.strip()] and done.stdout.startswith(
        "device_check: FAIL no NVIDIA GPU"
    )


def test_python_part_refuses_cuda_without_a_gpu():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(SCRIPT_PY), "--device", "cuda"], capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert done.stdout.strip().splitlines() == [
        "device_check: FAIL no CUDA GPU visible to torch here (--device cpu runs the dry mode)"
    ]


def _outputs(*rows: tuple[list[int], list[int], list[float]]) -> tuple[dict, dict]:
    """(transformers reference, vLLM) outputs: per request its token ids in each and the reference's gaps."""
    ref = {"outputs": [{"prompt_ids": [1], "token_ids": a, "gaps": [{"gap": g} for g in gaps]} for a, _, gaps in rows]}
    vllm = {"platform": "test", "outputs": [{"prompt_ids": [1], "token_ids": b} for _, b, _ in rows]}
    return ref, vllm


def test_greedy_verdicts():
    dc = _load_script()
    args = argparse.Namespace(dtype="bfloat16", min_identical=0.5)
    same = ([5, 6, 7], [5, 6, 7], [3.0, 2.0, 2.0, 1.0])
    near_tie = ([5, 6, 7], [5, 9, 7], [3.0, 0.1, 2.0, 1.0])  # parts where the reference's top-2 gap is 0.1
    real = ([5, 6, 7], [5, 9, 7], [3.0, 4.0, 2.0, 1.0])  # parts where the reference was sure (gap 4)
    shorter = ([5, 6], [5, 6, 7], [3.0, 2.0, 0.05])  # vLLM went on where the reference stopped at a near-tie

    for tie in (near_tie, shorter):
        line = dc.compare_greedy(*_outputs(same, same, tie), 0.25, args)
        assert line.status == "PASS", line
        assert "2/3 greedy outputs identical" in line.detail and "1 diverged at near-ties" in line.detail
    assert dc.compare_greedy(*_outputs(same, same, near_tie), 0.05, args).status == "FAIL"  # a tighter tie
    assert dc.compare_greedy(*_outputs(same, same, real), 0.25, args).status == "FAIL"
    assert dc.compare_greedy(*_outputs(near_tie, near_tie, same), 0.25, args).status == "FAIL"  # 1/3 < 0.5
    ref, vllm = _outputs(same)
    vllm["outputs"][0]["prompt_ids"] = [2]
    assert "tokenised the prompt differently" in dc.compare_greedy(ref, vllm, 0.25, args).detail


@pytest.mark.slow
def test_dry_run_on_the_cpu(tmp_path):
    """The train and features checks' code on the CPU (micro model, fp32 to keep it short)."""
    cmd = [sys.executable, str(SCRIPT_PY), "--device", "cpu", "--model", "micro", "--train-dtype", "fp32"]
    done = subprocess.run(
        [*cmd, "--dim", "256", "--work", str(tmp_path)], capture_output=True, text=True, timeout=900, cwd=tmp_path
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert [line.split(":")[0] for line in lines] == [f"device_check {c}" for c in ("greedy", "train", "features")]
    assert lines[0].startswith("device_check greedy: SKIP") and "PASS" in lines[1] and "PASS" in lines[2]
    assert "4 fp32 LoRA steps on cpu" in lines[1] and "cpu vs cpu on 16 examples" in lines[2]
    assert (tmp_path / "summary.txt").read_text().splitlines() == lines
