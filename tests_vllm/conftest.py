"""Fixtures for the vLLM backend tests: the real SmolLM2 folder, reference outputs from the main
venv's transformers backend, and one vLLM engine per test module (never two alive at once).

Run with the vLLM venv: `make test-vllm` (= .venv-vllm/bin/python -m pytest tests_vllm).

How the engine runs under pytest: in this process. vLLM's CPU platform forces the `spawn` start
method for its EngineCore and worker processes; a spawned child re-imports the parent's main module
as `__mp_main__`, and pytest's `__main__` only runs under its `if __name__ == "__main__"` guard, so
nothing re-runs. No subprocess wrapper or environment setting is needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from scoder_lib.core.config import REPO_ROOT, ModelSpec, Sampling
from scoder_lib.core.logs import setup_logging
from scoder_lib.llm.base import GenRequest

MODEL_DIR = REPO_ROOT / ".cache" / "scoder" / "models" / "smollm2-135m-instruct"
MAIN_PYTHON = Path(os.environ.get("SCODER_MAIN_PYTHON", REPO_ROOT / ".venv" / "bin" / "python"))
MAX_NEW_TOKENS = 48
GREEDY = Sampling(temperature=0.0, max_new_tokens=MAX_NEW_TOKENS)

CHAT = [
    "Write a Python function that reverses a string.",
    "What does the `yield` keyword do in Python? Answer in two sentences.",
    "Write a function `is_prime(n)` with a docstring.",
    "Explain the difference between a list and a tuple.",
    "Give me three test cases for a function that sorts a list of integers.",
    "Fix the bug: def add(a, b): return a - b",
    "Write a SQL query that counts rows in a table named users.",
    "Summarise what a hash map is, for a beginner.",
]
RAW = [
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "# A function that checks whether a string is a palindrome\ndef",
]


def reference_requests() -> list[GenRequest]:
    """8 chat prompts (one with a system turn), 2 raw prompts, and one chat request with a stop string."""
    chat = [GenRequest.chat([{"role": "user", "content": c}], GREEDY) for c in CHAT]
    chat[1] = GenRequest.chat(
        [{"role": "system", "content": "You are a terse Python expert."}, {"role": "user", "content": CHAT[1]}], GREEDY
    )
    raw = [GenRequest.completion(p, GREEDY) for p in RAW]
    stop = [GenRequest.chat([{"role": "user", "content": CHAT[0]}], GREEDY, stop=("\n\n",))]
    return chat + raw + stop


@pytest.fixture(scope="session")
def spec() -> ModelSpec:
    if not (MODEL_DIR / "config.json").exists():
        pytest.fail(
            f"{MODEL_DIR} is missing: run `make model` (or .venv/bin/python -m scoder_lib.llm.models "
            "prepare --profile smoke) first"
        )
    return ModelSpec(name=str(MODEL_DIR), backend="vllm", dtype="float32")


def run_reference(tmp: Path, model: str, requests: list[GenRequest], cache_dir: Path) -> dict[str, Any]:
    """Reference outputs from the main venv's transformers backend (see reference.py)."""
    src, dst = tmp / "reference-in.json", tmp / "reference-out.json"
    src.write_text(json.dumps({"model": model, "cache_dir": str(cache_dir), "requests": [asdict(r) for r in requests]}))
    main_venv("generate", str(src), str(dst))
    return json.loads(dst.read_text())


def main_venv(*args: str) -> None:
    """Run tests_vllm/reference.py with the main venv's Python."""
    if not MAIN_PYTHON.exists():
        pytest.fail(f"{MAIN_PYTHON} is missing: run `make venv` (or set SCODER_MAIN_PYTHON)")
    subprocess.run(
        [str(MAIN_PYTHON), str(Path(__file__).with_name("reference.py")), *args], check=True, cwd=REPO_ROOT, timeout=600
    )


@pytest.fixture(scope="session")
def reference(spec: ModelSpec, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("reference")
    return run_reference(tmp, spec.name, reference_requests(), REPO_ROOT / ".cache" / "scoder")


@pytest.fixture(scope="module")
def backend(spec: ModelSpec) -> Iterator[Any]:
    """The engine, built the way the pipeline builds it (make_backend); closed after its module so
    that two engines (4 GiB of KV cache each on CPU) never live at once."""
    from scoder_lib.llm.generator import make_backend  # noqa: PLC0415 - after logging set-up: vLLM logs on import

    setup_logging()
    b = make_backend(spec, REPO_ROOT / ".cache" / "scoder")
    yield b
    b.close()


def pytest_configure(config: pytest.Config) -> None:
    # Why: a clear message beats an ImportError in every test when run from the wrong venv.
    try:
        import vllm  # noqa: F401, PLC0415 - the point is to catch its absence
    except ImportError:
        raise pytest.UsageError(
            f"tests_vllm needs vLLM: run them with .venv-vllm/bin/python (`make test-vllm`), not {sys.executable}"
        ) from None
