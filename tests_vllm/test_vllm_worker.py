"""A vLLM engine in a model worker (a spec with `python:`, as the paper profiles run it) leaves no process
behind once the worker is stopped: after `make rehearse` an orphaned EngineCore was found, its worker
killed by the SIGINT a notebook kernel's process group gets at shutdown."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from scoder_lib.core.config import REPO_ROOT, ModelSpec
from scoder_lib.llm.base import GenRequest

from .conftest import GREEDY


def _children(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc)."""
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if fields[0] not in (b"Z", b"X"):
                kids.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for kid in kids.get(todo.pop(), []):
            found.add(kid)
            todo.append(kid)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def test_stopping_a_vllm_worker_leaves_no_engine_process(spec: ModelSpec) -> None:
    from scoder_lib.llm.generator import make_backend  # noqa: PLC0415 - vLLM logs on import
    from scoder_lib.llm.worker import stop_workers  # noqa: PLC0415

    backend = make_backend(spec.model_copy(update={"python": sys.executable}), REPO_ROOT / ".cache" / "scoder")
    req = GenRequest.chat([{"role": "user", "content": "Say hi."}], GREEDY)
    assert backend.generate([req])[0].texts
    engine = _children(backend.proc.pid)  # the EngineCore and what it started
    assert engine, "the worker started no engine process"
    stop_workers()
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in engine) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in engine if _alive(p)], "an engine process outlived its worker"
