"""Sandboxed execution of untrusted (model-written) Python programs, one at a time or in a pool.

How a program runs: each worker slot owns one long-lived sandbox (bubblewrap where it works) in
which a small server (`harness/zygote.py`) forks a fresh child per program. The child gets its
own session and process group, a new empty temp folder as cwd/HOME/TMPDIR, stdin from a memfd
(empty unless the job gives input), a scrubbed environment, rlimits (address space, CPU time,
file size, processes), in landlock mode a Landlock + seccomp wall it applies to itself, and,
where we run as root, an unprivileged uid of its own. Output is
captured up to a cap; at the wall-clock deadline the whole group is killed, and afterwards every
process the program left behind (found because the server is a child subreaper) and its folder.

Passing means the harness wrote its completion marker (a per-job nonce on a private pipe) after
the last line of the program, tests and driver, and the child then exited 0. Exiting early
(sys.exit(0), os._exit(0), raising SystemExit, killing the server) never yields the marker.
Test `assert`s are rewritten so their operands must not be program-made classes that override
comparison or arithmetic dunders ("always equal" objects); see `harness/compare.py`.

Threat model (what a model-written program can and cannot do to us). The mode is chosen by
`isolation.isolation_in_force`: 'auto' takes bwrap, else landlock, else rlimits (with a warning);
'strict' refuses to run a program without a complete wall. Every mode has: a scrubbed environment
(no API keys), rlimits on memory (RLIMIT_AS), CPU time, file size and, where they bind, processes;
a wall-clock kill; capped output; stray processes and files swept after each program.
- bwrap (bubblewrap, namespaces): writing anywhere but its temp folder (read-only root, private
  /tmp), reading $HOME (masked with a tmpfs), the network (own empty net namespace), seeing or
  signalling host processes (own pid namespace), fork bombs (RLIMIT_NPROC per private uid).
- landlock (Landlock + seccomp, applied by each forked child to itself, inherited by every binary
  it starts; see `harness/wall.py`): reading anything outside an allow-list (system folders, /etc,
  the interpreter and its site-packages, the harness) and writing outside its temp folder; sockets
  of any family (seccomp; Landlock also refuses TCP from ABI 4); io_uring, ptrace, keyrings, bpf,
  namespaces, mounts, module loading; listing /proc or reading another process's entries (only
  machine-wide counts such as /proc/meminfo stay readable); signals
  to processes outside the program (Landlock ABI >= 6, else only with a private uid).
- rlimits (no wall): the limits above, sockets refused by an audit hook; where we are root and the
  interpreter is readable by an unprivileged uid, the program runs under a private uid (file
  permissions then protect the host's private files and processes). Otherwise the audit hook also
  refuses writes outside the temp folder, kills of foreign processes, other processes' /proc
  entries, and too many forks. The hook is bypassed by running another binary or by calling libc
  through ctypes: a program can read your files and reach the network.
- Not defended in any mode: a program that introspects the interpreter (gc, frames) to find the
  nonce and writes a fake marker, or that monkeypatches the harness or builtins the tests rely on;
  CPU/memory side channels; kernel exploits; reading world-readable system files (bwrap leaves the
  root filesystem visible, landlock /usr and /etc). Without bwrap and without a private uid, a fork
  bomb of child binaries is bounded only by the timeout and the sweep (RLIMIT_NPROC would count
  all the user's processes), and in landlock mode POSIX semaphores (/dev/shm, multiprocessing
  locks) are unavailable. Tests: tests/test_execution.py and tests/test_containment.py.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from scoder_lib.core.hashing import fingerprint
from scoder_lib.core.logs import Progress, get_logger
from scoder_lib.core.wire import read_msg, write_msg
from scoder_lib.sandbox.isolation import (
    Plan,
    SandboxUnavailable,
    isolation_in_force,
    plan_for,
    private_uid,
    program_env,
)

log = get_logger(__name__)

STATUSES = ("passed", "failed", "timeout", "error")
_ZYGOTE = Path(__file__).resolve().parent / "harness" / "zygote.py"
_SLOT_NUMBERS = itertools.count()  # across all pools of this process: no two live slots share a uid
_HOST_GRACE_S = 15.0  # beyond the job timeout, before we call the sandbox itself hung


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one program: status is passed | failed | timeout | error, reason is short."""

    status: str
    reason: str = ""
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0
    payload: Any = field(default=None, compare=False)  # what a driver returned (per-input verdicts ...)
    isolation: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class Job:
    """One program. `tests` (trusted asserts) and `driver` (a harness driver) run after it."""

    program: str
    tests: str | None = None
    driver: str | None = None
    payload: Any = None
    stdin: str = ""
    timeout_s: float | None = None  # None: the run's default
    memory_mb: int | None = None
    max_result_mb: int = 64  # cap on what the harness reports back (driver payloads)


# ----------------------------------------------------------------------------- isolation
# ----------------------------------------------------------------------------- slots and pool
# Why one long-lived spawner thread: bwrap's --die-with-parent (PR_SET_PDEATHSIG) fires when the
# *thread* that started it exits, so sandboxes must not be started from short-lived pool threads.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoder-sandbox-spawn")


class _Slot:
    """One worker: a zygote process (inside its own sandbox), restarted whenever it dies."""

    def __init__(self, plan: Plan, tmp_root: str, preload: tuple[str, ...]):
        self.plan, self.tmp_root, self.preload = plan, tmp_root, preload
        self.uid = private_uid(next(_SLOT_NUMBERS) % 511) if plan.uid_drop else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.errlog: Any = None

    def _config(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "tmp_root": self.tmp_root,
            "env": program_env(),
            "guard": self.plan.guard,
            "nproc": self.plan.nproc,
            "sweep_dirs": ["/tmp", "/var/tmp", "/dev/shm"],
            "preload": list(self.preload),
            "wall": self.plan.wall,
        }

    def start(self) -> None:
        self.errlog = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the worker
        cmd = [*self.plan.prefix, sys.executable, "-s", "-P", str(_ZYGOTE), json.dumps(self._config())]
        self.proc = _SPAWNER.submit(
            subprocess.Popen,
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.errlog,
            env=program_env(),
            start_new_session=True,
        ).result()
        try:
            hello = read_msg(self.proc.stdout.fileno(), time.monotonic() + 60)
        except TimeoutError:
            hello = None
        if not hello or not hello.get("ready"):
            raise SandboxUnavailable(f"sandbox worker did not start ({self.plan.mode}): {self._stderr_tail()}")

    def _stderr_tail(self) -> str:
        if self.errlog is None:
            return ""
        self.errlog.seek(0)
        return self.errlog.read()[-600:].decode("utf-8", "replace").strip()

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one job, wait for its verdict; a dead or hung zygote is killed and reported."""
        for attempt in (0, 1):
            if self.proc is None or self.proc.poll() is not None:
                self.close()
                self.start()
            try:
                write_msg(self.proc.stdin.fileno(), request)
                break
            except BrokenPipeError:
                self.close()  # died between jobs: start a fresh one and resend once
                if attempt:
                    raise
        try:
            reply = read_msg(self.proc.stdout.fileno(), time.monotonic() + request["timeout_s"] + _HOST_GRACE_S)
        except TimeoutError:
            self.close()
            return {"status": "timeout", "reason": "sandbox worker hung; killed and restarted"}
        if reply is None:
            self.close()
            return {"status": "failed", "reason": "sandbox worker died during the run (killed by the program?)"}
        return reply

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()  # bwrap --die-with-parent / PDEATHSIG take the rest with it
            self.proc.wait()
            for pipe in (self.proc.stdin, self.proc.stdout):
                with contextlib.suppress(OSError):
                    pipe.close()
            self.proc = None
        if self.errlog is not None:
            self.errlog.close()
            self.errlog = None


class _Pool:
    """Slots of one isolation mode, shared by all calls; each call checks out its own slots."""

    def __init__(self, mode: str, preload: tuple[str, ...]):
        self.plan, self.preload = plan_for(mode), preload
        self.tmp_root = self.plan.tmp_root or self._host_tmp()
        self.free: list[_Slot] = []
        self.lock = threading.Lock()

    @staticmethod
    def _host_tmp() -> str:
        root = tempfile.mkdtemp(prefix="scoder-sandbox-")
        os.chmod(root, 0o711)  # private uids must reach their own job folder inside
        return root

    def checkout(self, n: int) -> list[_Slot]:
        with self.lock:
            slots = [self.free.pop() for _ in range(min(n, len(self.free)))]
            while len(slots) < n:
                slots.append(_Slot(self.plan, self.tmp_root, self.preload))
        return slots

    def checkin(self, slots: list[_Slot]) -> None:
        with self.lock:
            self.free.extend(slots)

    def close(self) -> None:
        with self.lock:
            for slot in self.free:
                slot.close()
            self.free.clear()
        if self.plan.tmp_root is None:
            shutil.rmtree(self.tmp_root, ignore_errors=True)


_POOLS: dict[tuple[int, str, tuple[str, ...]], _Pool] = {}
_POOLS_LOCK = threading.Lock()


def _pool(mode: str, preload: tuple[str, ...]) -> _Pool:
    key = (os.getpid(), mode, preload)  # a forked host process must not share its parent's sandboxes
    with _POOLS_LOCK:
        if key not in _POOLS:
            _POOLS[key] = _Pool(mode, preload)
        return _POOLS[key]


@atexit.register
def shutdown() -> None:
    """Stop every sandbox worker of this process (also runs at interpreter exit)."""
    with _POOLS_LOCK:
        pools = [p for (pid, _, _), p in _POOLS.items() if pid == os.getpid()]
        _POOLS.clear()
    for p in pools:
        p.close()


# ----------------------------------------------------------------------------- public API
def _as_job(item: Job | str | tuple[str, str] | dict[str, Any]) -> Job:
    if isinstance(item, Job):
        return item
    if isinstance(item, str):
        return Job(program=item)
    if isinstance(item, tuple):
        return Job(program=item[0], tests=item[1])
    return Job(**item)


def _request(job: Job, timeout_s: float, memory_mb: int, max_output: int) -> dict[str, Any]:
    first = "<solution>" if job.tests is not None else "<program>"
    segments = [{"name": first, "code": job.program}]
    if job.tests is not None:
        segments.append({"name": "<tests>", "code": job.tests, "guard": True})
    return {
        "segments": segments,
        "driver": job.driver,
        "payload": job.payload,
        "stdin": job.stdin,
        "timeout_s": float(job.timeout_s or timeout_s),
        "memory_mb": int(job.memory_mb or memory_mb),
        "max_output": max_output,
        "max_result": job.max_result_mb << 20,
    }


def _result(reply: dict[str, Any], mode: str) -> ExecResult:
    return ExecResult(
        reply["status"],
        reply.get("reason", ""),
        reply.get("stdout", ""),
        reply.get("stderr", ""),
        float(reply.get("wall_s", 0.0)),
        reply.get("payload"),
        mode,
    )


def run_many(
    jobs: Iterable[Job | str | tuple[str, str] | dict[str, Any]],
    *,
    workers: int = 2,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    isolation: str = "auto",
    desc: str | None = None,
    max_output: int = 1 << 16,
    preload: tuple[str, ...] = (),
) -> list[ExecResult]:
    """Run programs in parallel sandboxes; results keep the input order.

    A job is a `Job`, a program string, or a `(solution, tests)` pair. `preload` names modules the
    sandbox server imports once so that programs find them loaded (numpy, pandas ...).
    """
    specs = [_as_job(j) for j in jobs]
    if not specs:
        return []
    mode = isolation_in_force(isolation)
    pool = _pool(mode, tuple(preload))
    slots = pool.checkout(max(1, min(int(workers), len(specs))))
    results: list[ExecResult | None] = [None] * len(specs)
    progress = Progress(len(specs), desc, unit="programs", logger=log) if desc else None
    lock, cursor = threading.Lock(), iter(range(len(specs)))

    def work(slot: _Slot) -> None:
        while True:
            with lock:
                i = next(cursor, None)
            if i is None:
                return
            results[i] = _result(slot.run(_request(specs[i], timeout_s, memory_mb, max_output)), mode)
            if progress is not None:
                with lock:
                    progress.update()

    try:
        with ThreadPoolExecutor(len(slots), thread_name_prefix="scoder-sandbox") as ex:
            list(ex.map(work, slots))
    finally:
        pool.checkin(slots)
    return [r for r in results if r is not None]


def run_program(
    code: str,
    *,
    timeout_s: float = 10,
    memory_mb: int = 1024,
    isolation: str = "auto",
    stdin: str = "",
    workers: int = 1,
) -> ExecResult:
    """Run one program; it passes iff it runs to its end and exits normally. (`workers` is ignored.)"""
    return run_many(
        [Job(program=code, stdin=stdin)], workers=1, timeout_s=timeout_s, memory_mb=memory_mb, isolation=isolation
    )[0]


def check_solution(solution: str, tests: str, **limits: Any) -> ExecResult:
    """Run a solution followed by plain `assert` tests; passes iff every assert ran and held."""
    limits.pop("workers", None)
    return run_many([Job(program=solution, tests=tests)], workers=1, **limits)[0]


@functools.cache
def harness_fingerprint() -> str:
    """Hash of the sandbox's source: a changed harness must not reuse cached verdicts."""
    root = resources.files("scoder_lib.sandbox")
    files = [
        *sorted(root.iterdir(), key=lambda p: p.name),
        *sorted((root / "harness").iterdir(), key=lambda p: p.name),
        resources.files("scoder_lib.core") / "wire.py",
    ]
    return fingerprint([f.read_text(encoding="utf-8") for f in files if f.name.endswith(".py")])
