"""Shared fixtures: offline, CPU-only, small. The benchmark files come from ../shared/benchmarks.

Caches are per test session (a temp folder): only the prepared models are shared with the
repository's `.cache/scoder/models` (converted once by `make model`), read through a link.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import scoder_lib  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
from scoder_lib.core.config import REPO_ROOT, LoraOptions, ModelSpec, TrainOptions
from scoder_lib.core.params import load_config
from scoder_lib.llm.models import ModelRef, prepare
from scoder_lib.method.train import Example, sft

SHARED_BENCHMARKS = (REPO_ROOT.parent / "shared" / "benchmarks").resolve()
REPO_MODELS = REPO_ROOT / ".cache" / "scoder" / "models"
PY = Path(sys.executable)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def strays(before: set[int], settle_s: float = 5.0) -> set[int]:
    """Processes below this test that were not there `before`, after giving killed ones `settle_s` to
    finish exiting: a SIGKILLed process on a loaded machine stays live (not yet a zombie) while the
    kernel tears it down. A real escape (a fork bomb's child that survived) is still there after it."""
    deadline = time.monotonic() + settle_s
    while (left := descendants() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def alive_after(pids: list[int], wait_s: float) -> list[int]:
    """Those of `pids` still live after waiting up to `wait_s` for all of them to go."""
    deadline = time.monotonic() + wait_s
    while (left := [p for p in pids if live_stat(p) is not None]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def live_stat(pid: int | str) -> list[bytes] | None:
    """/proc/PID/stat's fields after the command (state, ppid, ...); None once the process is gone or a
    zombie (it runs nothing: it waits for whoever adopted it to reap it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in (b"Z", b"X") else fields


def descendants() -> set[int]:
    """Every live process below this test process (the sandbox servers, and any strays)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := live_stat(entry)) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = set(), [os.getpid()]
    while todo:
        for kid in children.get(todo.pop(), []):
            found.add(kid)
            todo.append(kid)
    return found


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
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder of this test session whose `models/` is the repository's prepared models."""
    folder = tmp_path_factory.mktemp("cache")
    REPO_MODELS.mkdir(parents=True, exist_ok=True)
    (folder / "models").symlink_to(REPO_MODELS, target_is_directory=True)
    return folder


@pytest.fixture(scope="session")
def micro_spec() -> ModelSpec:
    return ModelSpec(name="micro", batch_size=4)


@pytest.fixture(scope="session")
def micro_ref(cache_dir: Path, micro_spec: ModelSpec) -> ModelRef:
    """The random-init 2-layer model with SmolLM2's tokenizer (built once, seeded)."""
    return prepare(micro_spec, cache_dir)


def train_micro(ref: ModelRef, out: Path, n: int = 8, num_checkpoints: int = 2, **opts: object) -> list[Path]:
    """A few LoRA steps on toy examples: checkpoints with Adam moments, for what trains or samples."""
    ex = [Example.of([{"role": "user", "content": f"q{i}"}], f"a{i}") for i in range(n)]
    options = TrainOptions(
        **{
            "epochs": 1,
            "batch_size": 2,
            "num_checkpoints": num_checkpoints,
            "max_seq_len": 64,
            "lora": LoraOptions(r=4),
            **opts,
        }
    )
    return sft(ex, ref.path, out, options, ref.fingerprint).checkpoints


@pytest.fixture(scope="session")
def micro_checkpoints(micro_ref: ModelRef, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two LoRA checkpoints of the micro model (a synthesizer with M = 2)."""
    return train_micro(micro_ref, tmp_path_factory.mktemp("synth"))


@contextlib.contextmanager
def listener(timeout: float) -> Iterator[tuple[int, list[object]]]:
    """A TCP listener on 127.0.0.1: (its port, the connections it accepted), closed on exit; for tests
    that check a sandboxed program cannot connect."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(timeout)
    accepted: list[object] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            conn, _ = server.accept()
            accepted.append(conn)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], accepted
    finally:
        server.shutdown(socket.SHUT_RDWR)  # wakes the accept() if nothing connected
        server.close()
        thread.join()


def interruptible() -> None:
    """In a child about to exec: take Ctrl-C as a terminal would. A test suite started in the background
    (`make test &`, CI wrappers) inherits SIGINT ignored, and so would every process it starts."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def make(
    *goals: str, outputs: Path, profile: str | Path, run: str, timeout: float = 900, popen: bool = False, **kw: object
) -> subprocess.CompletedProcess | subprocess.Popen:
    """`make <goals>` on this repository with this interpreter's venv, outputs in a temp folder."""
    args = [
        "make",
        "--no-print-directory",
        *goals,
        f"PROFILE={profile}",
        f"RUN={run}",
        f"OUTPUTS={outputs}",
        f"PY={PY}",
        f"VENV={PY.parent.parent}",
    ]
    env = {**os.environ, "SCODER_OUTPUTS": ""}
    if popen:
        return subprocess.Popen(
            args,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=interruptible,
            env=env,
            **kw,
        )
    return subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=timeout, **kw)
