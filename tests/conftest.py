"""Shared fixtures: offline, CPU-only, small. The benchmark files come from ../shared/benchmarks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import scoder_lib  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
from scoder_lib.config import REPO_ROOT, load_config

SHARED_BENCHMARKS = (REPO_ROOT.parent / "shared" / "benchmarks").resolve()
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def bench_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """(folder, fill_from) for benchmark loaders; skips if ../shared/benchmarks is absent."""
    if not SHARED_BENCHMARKS.is_dir():
        pytest.skip(f"benchmark files not found at {SHARED_BENCHMARKS}")
    return tmp_path_factory.mktemp("benchmarks"), [SHARED_BENCHMARKS]


@pytest.fixture(scope="session")
def smoke_cfg():
    return load_config("smoke")


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """The repo's model cache: the converted SmolLM2 and the micro model are built once."""
    return REPO_ROOT / ".cache" / "scoder"
