"""Sandboxed execution of untrusted (model-written) Python programs, one at a time or in a pool.

How a program runs: each worker slot owns one long-lived sandbox (bubblewrap where it works) in
which a small server (`harness/zygote.py`) forks a fresh child per program. The child gets its
own session and process group, a new empty temp folder as cwd/HOME/TMPDIR, stdin from a memfd
(empty unless the job gives input), a scrubbed environment, rlimits (address space, CPU time,
file size, processes), and, where we run as root, an unprivileged uid of its own. Output is
captured up to a cap; at the wall-clock deadline the whole group is killed, and afterwards every
process the program left behind (found because the server is a child subreaper) and its folder.

Passing means the harness wrote its completion marker (a per-job nonce on a private pipe) after
the last line of the program, tests and driver, and the child then exited 0. Exiting early
(sys.exit(0), os._exit(0), raising SystemExit, killing the server) never yields the marker.
Test `assert`s are rewritten so their operands must not be program-made classes that override
comparison or arithmetic dunders ("always equal" objects); see `harness/compare.py`.

Threat model (what a model-written program can and cannot do to us):
- Defended, bwrap mode: writing anywhere but its temp folder (read-only root, private /tmp),
  network (own empty net namespace), seeing or signalling host processes (own pid namespace),
  reading host secrets from the environment (scrubbed) or from $HOME (masked with a tmpfs),
  fork bombs (RLIMIT_NPROC per private uid), memory bombs (RLIMIT_AS), hangs (timeout + kill),
  huge output (capped), stray processes and files (swept after each program).
- Defended softly, rlimits mode (no namespaces available): the limits above, sockets refused by
  an audit hook; where the interpreter is readable by an unprivileged uid and we are root, the
  program runs under that uid (file permissions then protect the host). Otherwise the audit hook
  also refuses writes outside the temp folder, kills of foreign processes, other processes'
  /proc entries, and too many forks. That hook is bypassed by running another binary
  (subprocess) or by calling libc through ctypes; it is a fallback, not a wall.
- Not defended: a program that introspects the interpreter (gc, frames) to find the nonce and
  writes a fake marker, or that monkeypatches the harness or builtins the tests rely on;
  CPU/memory side channels; kernel exploits; reading world-readable files that bwrap leaves
  visible (the root filesystem is read-only, not hidden); in rlimits mode without a uid change,
  everything the soft hook cannot see. The isolation used is reported by `isolation_in_force`.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import json
import os
import select
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .logs import Progress, get_logger

log = get_logger(__name__)

ISOLATIONS = ("auto", "bwrap", "rlimits")
STATUSES = ("passed", "failed", "timeout", "error")
_ZYGOTE = Path(__file__).resolve().parent / "harness" / "zygote.py"
_REPO = Path(__file__).resolve().parent.parent
_UID_BASE = 0x4000_0000  # private uids: base + (host pid << 9) + slot number, never a real account
_SLOT_NUMBERS = itertools.count()  # across all pools of this process: no two live slots share a uid
_NPROC = 256  # processes + threads per program
_KEEP_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
_HOST_GRACE_S = 15.0  # beyond the job timeout, before we call the sandbox itself hung


class SandboxUnavailable(RuntimeError):
    """The requested isolation cannot be provided on this machine."""


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
@dataclass(frozen=True)
class _Plan:
    """How slots of one isolation mode are started: command prefix and zygote config."""

    mode: str
    prefix: tuple[str, ...]
    uid_drop: bool
    nproc: int  # RLIMIT_NPROC for programs; 0 where the kernel would not enforce it (root's own uid)
    guard: dict[str, Any]
    tmp_root: str | None  # None: a per-pool folder on the host


def isolation_in_force(isolation: str = "auto") -> str:
    """'bwrap' or 'rlimits': what `isolation` resolves to here ('bwrap' raises if unusable)."""
    if isolation not in ISOLATIONS:
        raise ValueError(f"isolation must be one of {ISOLATIONS}, got {isolation!r}")
    if isolation == "rlimits":
        return "rlimits"
    ok, why = _bwrap_status()
    if ok:
        return "bwrap"
    if isolation == "bwrap":
        raise SandboxUnavailable(f"isolation 'bwrap' requested but bubblewrap is unusable here: {why} "
                                 f"(Debian: apt-get install bubblewrap)")
    return "rlimits"


def isolation_details(isolation: str = "auto") -> dict[str, Any]:
    """What a report should say about the isolation: mode, uid change, soft guards."""
    plan = _plan(isolation_in_force(isolation))
    return {"isolation": plan.mode, "private_uid": plan.uid_drop,
            "soft_guard": sorted(k for k, v in plan.guard.items() if v and k != "protected"),
            "bwrap_reason": _bwrap_status()[1]}


def _is_root() -> bool:
    return os.geteuid() == 0


def _private_uid(slot: int) -> int:
    return _UID_BASE + ((os.getpid() & 0x3FFFFF) << 9) + slot


def _needed_paths() -> list[str]:
    """Folders the sandboxed interpreter must read: its prefixes, sys.path, this repository."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(_REPO),
             os.path.dirname(os.path.realpath(sys.executable))}
    paths |= {p for p in sys.path if p and os.path.isabs(p) and os.path.exists(p)}
    paths = {os.path.realpath(p) for p in paths} | paths
    # Never re-bind the sandbox's own writable folders: a script run from /tmp puts "/tmp" on
    # sys.path, and a read-only bind over it made every program fail (EROFS on its job folder).
    paths -= {"/tmp", "/dev/shm", "/"}
    ordered = sorted(p for p in paths if os.path.exists(p))
    return [p for p in ordered if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in ordered)]


def _masks(needed: list[str]) -> list[str]:
    """bwrap args hiding $HOME, /tmp and untraversable folders, then re-binding what Python needs."""
    hidden = {"/tmp", os.path.realpath(os.path.expanduser("~"))} - {"/"}
    for p in needed:
        parts = Path(p).parts
        for i in range(2, len(parts) + 1):
            anc = str(Path(*parts[:i]))
            if not os.stat(anc).st_mode & stat.S_IXOTH:
                hidden.add(anc)  # an unprivileged uid could not reach `p` through it
                break
    args = []
    for h in sorted(hidden):
        if h != "/tmp":
            args += ["--tmpfs", h]
    made: set[str] = set()
    for p in needed:
        h = next((h for h in hidden if p == h or p.startswith(h + "/")), None)
        if h is None:
            continue
        for depth in range(len(Path(h).parts) + 1, len(Path(p).parts)):
            d = str(Path(*Path(p).parts[:depth]))
            if d not in made:  # bwrap would create these 0700: unreachable for a private uid
                args += ["--perms", "0755", "--dir", d]
                made.add(d)
        args += ["--ro-bind", p, p]
    return args


def _bwrap_prefix(uid_drop: bool) -> tuple[str, ...]:
    exe = shutil.which("bwrap") or "bwrap"
    # /tmp and /dev/shm: private, world-writable like on a normal machine (tests write there),
    # and swept of the program's files after every run.
    base = [exe, "--ro-bind", "/", "/", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm",
            "--proc", "/proc", "--perms", "1777", "--size", str(1 << 30), "--tmpfs", "/tmp",
            *_masks(_needed_paths()),
            "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session", "--chdir", "/tmp"]
    if _is_root():  # keep only what the zygote needs to set up and sweep after a program
        base += ["--cap-drop", "ALL"] + [a for c in ("SETUID", "SETGID", "CHOWN", "KILL", "DAC_OVERRIDE",
                                                      "FOWNER") for a in ("--cap-add", f"CAP_{c}")]
    else:
        base += ["--unshare-user"]
    return tuple(base) + ("--",)


_PROBE = ("import os,sys\nu=int(sys.argv[1])\nif u>=0:\n os.setgroups([]);os.setresgid(u,u,u);os.setresuid(u,u,u)\n"
          "import decimal, json, unittest\nprint('sandbox-ok')")


def _probe(prefix: tuple[str, ...], uid: int | None) -> tuple[bool, str]:
    """Run a tiny program the way a zygote would start; True if it prints the ok line."""
    cmd = [*prefix, sys.executable, "-s", "-P", "-c", _PROBE, str(-1 if uid is None else uid)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=_program_env())
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    if "sandbox-ok" in out.stdout:
        return True, "ok"
    return False, (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1][:200]


@functools.cache
def _bwrap_status() -> tuple[bool, str]:
    """Probed once per process: can we start a bubblewrap sandbox here?"""
    if shutil.which("bwrap") is None:
        return False, "bwrap not found on PATH"
    return _probe(_bwrap_prefix(False), None)


@functools.cache
def _plan(mode: str) -> _Plan:
    """The plan for a mode; where we are root, prefer a private uid if Python stays importable under it."""
    probe_uid = _private_uid(511)
    prefix = _bwrap_prefix(True) if mode == "bwrap" else ()
    uid_drop = _is_root() and _probe(prefix, probe_uid)[0]
    if not uid_drop and mode == "bwrap":
        prefix = _bwrap_prefix(False)
    # RLIMIT_NPROC binds a private uid, or an unprivileged user inside bwrap's user namespace; root's
    # own uid is exempt, and outside a namespace the count would include all the user's processes.
    nproc_ok = uid_drop or (not _is_root() and mode == "bwrap")
    guard: dict[str, Any] = {"net": mode == "rlimits", "fs": mode == "rlimits" and not uid_drop,
                             "max_forks": None if nproc_ok else _NPROC, "protected": [os.getpid()]}
    if mode == "rlimits" and not uid_drop:
        log.warning("sandbox: rlimits mode without a private uid; only a soft in-process guard protects files")
    return _Plan(mode, prefix, uid_drop, _NPROC if nproc_ok else 0, guard, "/tmp" if mode == "bwrap" else None)


def _program_env() -> dict[str, str]:
    """The whole environment programs see: no API keys, no tokens, nothing from the caller but locale and PATH."""
    env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    # Deterministic set order across runs; one BLAS thread; no GUI backends.
    env.update(PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1", PYTHONIOENCODING="utf-8",
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    return env


# ----------------------------------------------------------------------------- slots and pool
# Why one long-lived spawner thread: bwrap's --die-with-parent (PR_SET_PDEATHSIG) fires when the
# *thread* that started it exits, so sandboxes must not be started from short-lived pool threads.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoder-sandbox-spawn")


def _write_msg(fd: int, obj: Any) -> None:
    body = json.dumps(obj, separators=(",", ":")).encode()
    view = memoryview(struct.pack(">I", len(body)) + body)
    while view:
        view = view[os.write(fd, view):]


def _read_msg(fd: int, deadline: float) -> Any:
    """One length-prefixed JSON message; None on end of file; TimeoutError at the deadline."""
    buf = bytearray()
    need = 4
    while len(buf) < need:
        wait = deadline - time.monotonic()
        if wait <= 0 or not select.select([fd], [], [], wait)[0]:
            raise TimeoutError
        chunk = os.read(fd, min(need - len(buf), 1 << 20))
        if not chunk:
            return None
        buf += chunk
        if len(buf) >= 4 and need == 4:
            need = 4 + struct.unpack(">I", bytes(buf[:4]))[0]
    return json.loads(bytes(buf[4:need]))


class _Slot:
    """One worker: a zygote process (inside its own sandbox), restarted whenever it dies."""

    def __init__(self, plan: _Plan, tmp_root: str, preload: tuple[str, ...]):
        self.plan, self.tmp_root, self.preload = plan, tmp_root, preload
        self.uid = _private_uid(next(_SLOT_NUMBERS) % 511) if plan.uid_drop else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.errlog: Any = None

    def _config(self) -> dict[str, Any]:
        return {"uid": self.uid, "tmp_root": self.tmp_root, "env": _program_env(), "guard": self.plan.guard,
                "nproc": self.plan.nproc,
                "sweep_dirs": ["/tmp", "/var/tmp", "/dev/shm"],
                "preload": list(self.preload)}

    def start(self) -> None:
        self.errlog = tempfile.TemporaryFile()
        cmd = [*self.plan.prefix, sys.executable, "-s", "-P", str(_ZYGOTE), json.dumps(self._config())]
        self.proc = _SPAWNER.submit(subprocess.Popen, cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=self.errlog, env=_program_env(), start_new_session=True).result()
        try:
            hello = _read_msg(self.proc.stdout.fileno(), time.monotonic() + 60)
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
                _write_msg(self.proc.stdin.fileno(), request)
                break
            except BrokenPipeError:
                self.close()  # died between jobs: start a fresh one and resend once
                if attempt:
                    raise
        try:
            reply = _read_msg(self.proc.stdout.fileno(), time.monotonic() + request["timeout_s"] + _HOST_GRACE_S)
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
                try:
                    pipe.close()
                except OSError:
                    pass
            self.proc = None
        if self.errlog is not None:
            self.errlog.close()
            self.errlog = None


class _Pool:
    """Slots of one isolation mode, shared by all calls; each call checks out its own slots."""

    def __init__(self, mode: str, preload: tuple[str, ...]):
        self.plan, self.preload = _plan(mode), preload
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
    return {"segments": segments, "driver": job.driver, "payload": job.payload, "stdin": job.stdin,
            "timeout_s": float(job.timeout_s or timeout_s), "memory_mb": int(job.memory_mb or memory_mb),
            "max_output": max_output, "max_result": job.max_result_mb << 20}


def _result(reply: dict[str, Any], mode: str) -> ExecResult:
    return ExecResult(reply["status"], reply.get("reason", ""), reply.get("stdout", ""), reply.get("stderr", ""),
                      float(reply.get("wall_s", 0.0)), reply.get("payload"), mode)


def run_many(jobs: Iterable[Job | str | tuple[str, str] | dict[str, Any]], *, workers: int = 2,
             timeout_s: float = 10.0, memory_mb: int = 1024, isolation: str = "auto",
             desc: str | None = None, max_output: int = 1 << 16, preload: tuple[str, ...] = ()) -> list[ExecResult]:
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


def run_program(code: str, *, timeout_s: float = 10, memory_mb: int = 1024, isolation: str = "auto",
                stdin: str = "", workers: int = 1) -> ExecResult:
    """Run one program; it passes iff it runs to its end and exits normally. (`workers` is ignored.)"""
    return run_many([Job(program=code, stdin=stdin)], workers=1, timeout_s=timeout_s,
                    memory_mb=memory_mb, isolation=isolation)[0]


def check_solution(solution: str, tests: str, **limits: Any) -> ExecResult:
    """Run a solution followed by plain `assert` tests; passes iff every assert ran and held."""
    limits.pop("workers", None)
    return run_many([Job(program=solution, tests=tests)], workers=1, **limits)[0]
