"""The forked child that runs one program, and how the zygote reads the child's outcome.

Completion marker: after the last segment (and driver) ran, the child writes one JSON line with
a per-job random nonce to a private pipe (fd 3) and exits with `os._exit(0)`. A program that
exits early (sys.exit, os._exit, a signal) never reaches that line; printing a fake marker to
stdout does nothing; writing one to fd 3 needs the nonce, which lives only in this process.
"""

from __future__ import annotations

import builtins
import ctypes
import json
import linecache
import math
import os
import resource
import signal
import sys
import tempfile
import threading
import traceback
import types
from typing import Any, NoReturn

from . import compare, drivers, guard

# Captured before any program runs: a program may rebind module attributes, not these names.
_write, _exit, _dumps = os.write, os._exit, json.dumps
_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38
_RESULT_FD = 3
_SEGMENTS = ("<program>", "<solution>", "<tests>")


def main(
    req: dict[str, Any],
    cfg: dict[str, Any],
    job_dir: str,
    nonce: str,
    stdin_fd: int,
    out_w: int,
    err_w: int,
    res_w: int,
    wall: Any = None,
) -> NoReturn:
    """Set up the sandboxed child, run the job, write the marker, exit. Never returns."""
    try:
        os.setsid()  # own session and process group: the zygote kills the whole group
        _wire_fds(stdin_fd, out_w, err_w, res_w)
        os.chdir(job_dir)
        _scrub_env(cfg["env"], job_dir)
        _set_limits(req, cfg)
        if wall is not None:
            wall.apply(job_dir)  # Landlock + seccomp: inherited by all the program starts, never lifted
        _drop_privileges(cfg.get("uid"))
        _fresh_interpreter_state(job_dir)
        g = cfg.get("guard") or {}
        if g.get("net") or g.get("fs") or g.get("max_forks"):
            guard.install(
                job_dir,
                net=g.get("net", False),
                fs=g.get("fs", False),
                max_forks=g.get("max_forks"),
                protected=set(g.get("protected", [])) | {os.getppid()},
            )
    except BaseException as exc:  # noqa: BLE001 - report, never fall through into the zygote loop
        _report(nonce, "error", f"sandbox setup failed: {type(exc).__name__}: {exc}", None)
        _exit(71)
    verdict, reason, payload = _run(req, job_dir)
    _join_threads()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - a closed stream is the program's business
            pass
    _report(nonce, verdict, reason, payload)
    _exit(0)


def _wire_fds(stdin_fd: int, out_w: int, err_w: int, res_w: int) -> None:
    os.dup2(stdin_fd, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    os.dup2(res_w, _RESULT_FD, inheritable=False)  # subprocesses must not inherit the marker pipe
    os.closerange(_RESULT_FD + 1, 1 << 16)  # the protocol pipes and every other zygote fd


def _scrub_env(env: dict[str, str], job_dir: str) -> None:
    os.environ.clear()  # also unsets them in the C environment that subprocesses inherit
    os.environ.update(env)
    os.environ.update(HOME=job_dir, TMPDIR=job_dir, MPLCONFIGDIR=job_dir)


def _set_limits(req: dict[str, Any], cfg: dict[str, Any]) -> None:
    mem = int(req["memory_mb"]) << 20
    cpu = int(math.ceil(float(req["timeout_s"]))) + 1
    fsize = int(cfg.get("max_file_mb", 256)) << 20
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    nproc = int(cfg.get("nproc", 0))
    if nproc:
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


def _drop_privileges(uid: int | None) -> None:
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    # After the uid change (which clears it): die with the zygote; never gain privileges via exec.
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    _LIBC.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def _fresh_interpreter_state(job_dir: str) -> None:
    """Undo what a fork shares with the zygote and with every sibling program."""
    import random  # noqa: PLC0415 - only programs that use it pay for it

    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    tempfile.tempdir = None
    # The program's standard streams, open for its whole life (hence no `with`).
    sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    sys.stderr = sys.__stderr__ = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    sys.argv = [os.path.join(job_dir, "main.py")]
    sys.dont_write_bytecode = True


def _run(req: dict[str, Any], job_dir: str) -> tuple[str, str, Any]:
    """Execute the segments in one fresh `__main__`, then the driver; return (verdict, reason, payload)."""
    module = types.ModuleType("__main__")
    module.__dict__.update(__builtins__=builtins, __file__=os.path.join(job_dir, "main.py"))
    sys.modules["__main__"] = module
    g = module.__dict__
    try:
        for seg in req["segments"]:
            name, src = seg["name"], seg["code"]
            linecache.cache[name] = (len(src), None, src.splitlines(True), name)
            # dont_inherit: the program runs with its own __future__ flags, not this module's
            # `annotations` (else `def f(x: List[int])` without importing List would pass).
            code = (
                compare.guard_asserts(src, name) if seg.get("guard") else compile(src, name, "exec", dont_inherit=True)
            )
            if seg.get("guard"):
                g.update(compare.GUARD_NAMES)
            exec(code, g)
        payload = None
        if req.get("driver"):
            payload = drivers.DRIVERS[req["driver"]](g, req.get("payload") or {})
        return "passed", "", payload
    except drivers.DriverFailure as exc:
        return "failed", exc.reason, exc.payload
    except SystemExit as exc:
        return "failed", f"SystemExit({exc.code!r}) raised before the end", None
    except BaseException as exc:  # noqa: BLE001 - every exception is a verdict here
        traceback.print_exc()
        return "failed", describe(exc), None


def describe(exc: BaseException) -> str:
    """`Type: message at <segment>:line `source``, short."""
    msg = str(exc).strip().replace("\n", " ")[:150]
    text = type(exc).__name__ + (f": {msg}" if msg else "")
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{text} at {exc.filename}:{exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename in _SEGMENTS]
    if frames:
        f = frames[-1]
        text += f" at {f.filename}:{f.lineno}" + (f" `{f.line.strip()[:100]}`" if f.line else "")
    return text


def _join_threads() -> None:
    """A normal interpreter exit waits for non-daemon threads; so do we."""
    for t in threading.enumerate():
        if t is not threading.main_thread() and not t.daemon:
            try:
                t.join()
            except BaseException:  # noqa: BLE001
                pass


def _report(nonce: str, verdict: str, reason: str, payload: Any) -> None:
    try:
        line = _dumps({"nonce": nonce, "verdict": verdict, "reason": reason[:500], "payload": payload})
    except (TypeError, ValueError) as exc:
        line = _dumps({"nonce": nonce, "verdict": "error", "reason": f"unreportable payload: {exc}"})
    view = memoryview((line + "\n").encode())
    try:
        while view:
            view = view[_write(_RESULT_FD, view) :]
    except OSError:
        _exit(72)  # the program closed our pipe: no marker, so no pass


_SIGNAL_REASONS = {
    signal.SIGXCPU: ("timeout", "CPU time limit exceeded"),
    signal.SIGKILL: ("failed", "killed by SIGKILL (memory or process limit, or a kill)"),
    signal.SIGSEGV: ("failed", "crashed (SIGSEGV; deep recursion or native crash)"),
    signal.SIGXFSZ: ("failed", "file size limit exceeded"),
}


def verdict(status: int | None, timed_out: bool, res: bytes, nonce: str, timeout_s: float) -> dict[str, Any]:
    """The job's status, reason and payload, from how the child ended and what it reported."""
    msg = _marker(res, nonce)
    if timed_out:
        return {"status": "timeout", "reason": f"wall-clock timeout after {timeout_s:g}s", "payload": None}
    exited_ok = status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    if msg is not None and msg["verdict"] != "passed":
        return {"status": msg["verdict"], "reason": msg["reason"], "payload": msg.get("payload")}
    if msg is not None and exited_ok:
        return {"status": "passed", "reason": "", "payload": msg.get("payload")}
    if status is not None and os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        st, why = _SIGNAL_REASONS.get(sig, ("failed", f"killed by signal {sig}"))
        return {"status": st, "reason": why, "payload": None}
    code = os.WEXITSTATUS(status) if status is not None else None
    return {
        "status": "failed",
        "reason": f"exited with status {code} before the end (no completion marker)",
        "payload": None,
    }


def _marker(res: bytes, nonce: str) -> dict[str, Any] | None:
    for line in reversed(res.decode("utf-8", "replace").splitlines()):
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict) and msg.get("nonce") == nonce:
            return msg
    return None
