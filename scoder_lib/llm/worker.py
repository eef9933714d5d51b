"""A backend that runs in another interpreter: the same requests and results, over a pipe.

Why: vLLM's CPU build pins its own transformers and torch, so it lives in a venv of its own
(`make venv-vllm`). With `python: .venv-vllm/bin/python` on a model spec, the pipeline (notebooks,
training, rating) stays in the project's venv and only generation runs in the worker, which imports
this same checkout. One worker per interpreter serves every model a process asks for (so an engine
started once is reused: see `vllm_backend.engine`). The worker reports its backends' names and
fingerprints, so cached outputs are the same whether a backend ran in-process or in a worker.

The worker's side is `llm.worker_main` (core.wire messages on stdin/stdout).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from scoder_lib.core.config import REPO_ROOT, ModelSpec
from scoder_lib.core.logs import get_logger
from scoder_lib.core.wire import read_msg, write_msg
from scoder_lib.llm.base import Backend, GenRequest, GenResult

log = get_logger(__name__)
START_TIMEOUT_S = 1800.0  # loading an engine (vLLM on a loaded CPU) can take minutes
REQUEST_TIMEOUT_S = 24 * 3600.0


def resolve_python(python: str) -> str:
    """The worker's interpreter: absolute, or relative to the repository root; must exist."""
    path = Path(python).expanduser()
    path = path if path.is_absolute() else REPO_ROOT / path
    if not path.exists():
        raise FileNotFoundError(
            f"model spec 'python: {python}': {path} does not exist (for vLLM's CPU build: `make venv-vllm`)"
        )
    return str(path)


class _Worker:
    """One worker process (per interpreter) and the calls to it, one at a time."""

    def __init__(self, python: str):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
        self.python = python
        # Its own process group, for it and what it starts (vLLM's EngineCore and its workers). Why: when a
        # notebook's kernel shuts down, the kernel's group gets SIGINT; the worker died of it before this
        # process could stop it, and its EngineCore, mid-shutdown, outlived both (seen after `make
        # rehearse`: an orphaned EngineCore holding its memory; on a GPU, the next engine's memory).
        # Stopped through the pipe instead (or by end of input when this process dies), then `stop`
        # kills whatever of its group is left.
        self.proc = subprocess.Popen(
            [python, "-m", "scoder_lib.llm.worker_main"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        self.lock = threading.Lock()
        self.handles = itertools.count(1)

    def call(self, msg: dict[str, Any], timeout_s: float) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self.lock:
            write_msg(self.proc.stdin.fileno(), msg)
            reply = read_msg(self.proc.stdout.fileno(), time.monotonic() + timeout_s)
        if reply is None:
            raise RuntimeError(f"model worker ({self.python}) exited with code {self.proc.wait()}; its log is above")
        if "error" in reply:
            raise RuntimeError(f"model worker failed: {reply['error']}")
        return reply["ok"]

    def stop(self) -> None:
        """Ask the worker to close its backends and exit, then kill what is left of its process group
        (an engine process stuck in its shutdown). Before `wait` reaps the worker, its pid, which is the
        group's id, cannot be reused."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, RuntimeError, TimeoutError):
                self.call({"exit": True}, 120.0)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


_WORKERS: dict[str, _Worker] = {}


def _worker(python: str) -> _Worker:
    w = _WORKERS.get(python)
    if w is None or w.proc.poll() is not None:
        if w is not None:
            w.stop()  # a worker that died: what it started may live on in its group
        w = _WORKERS[python] = _Worker(python)
    return w


@atexit.register
def stop_workers() -> None:
    """Stop every worker of this process (also at interpreter exit)."""
    for w in list(_WORKERS.values()):
        w.stop()
    _WORKERS.clear()


class WorkerBackend(Backend):
    """`spec`'s backend, built and run by the worker of `spec.python`."""

    def __init__(self, spec: ModelSpec, cache_dir: Path, model_path: str | None = None):
        self.worker = _worker(resolve_python(spec.python or sys.executable))
        self.handle = next(self.worker.handles)
        inner = spec.model_copy(update={"python": None})
        hello = self.worker.call(
            {
                "init": {
                    "handle": self.handle,
                    "spec": inner.model_dump(mode="json"),
                    "cache_dir": str(cache_dir),
                    "model_path": model_path,
                }
            },
            START_TIMEOUT_S,
        )
        self.name, self.fingerprint, self.chunk_size = hello["name"], hello["fingerprint"], hello["chunk_size"]
        log.info("%s backend in a worker (%s), fingerprint %s", self.name, self.worker.python, self.fingerprint)

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.worker.proc

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        out = self.worker.call({"generate": [asdict(r) for r in requests], "handle": self.handle}, REQUEST_TIMEOUT_S)
        return [GenResult.from_json(r) for r in out]

    def close(self) -> None:
        """Release this model in the worker (its engine too); the worker itself stays for the next model."""
        if self.worker.proc.poll() is None:
            self.worker.call({"close": self.handle}, 600.0)
