"""Sandbox-side server: one per worker slot; forks a fresh, limited child for every program.

Started by `scoder_lib.execution` as `python -I zygote.py CONFIG_JSON` (inside bubblewrap, or
bare in rlimits mode). It reads length-prefixed JSON requests on fd 0 and answers on fd 1; a
program never sees those descriptors. Why a pre-forked server: starting an interpreter (and a
sandbox) per program costs ~50 ms; forking one that is already warm costs ~1 ms.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import select
import shutil
import signal
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
import contextlib

from scoder_lib.core.wire import read_msg, write_msg  # noqa: E402
from scoder_lib.sandbox.harness import child, wall  # noqa: E402 - needs the path above

del sys.path[0]  # programs must not import the project by accident

_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_CHILD_SUBREAPER = 36
_READ = 1 << 16


class Collector:
    """Reads a child's pipes with per-pipe byte caps until they close or a deadline passes."""

    def __init__(self, caps: dict[int, int]):
        self.caps = caps
        self.data: dict[int, bytearray] = {fd: bytearray() for fd in caps}
        self.dropped: dict[int, int] = {fd: 0 for fd in caps}
        self.open = set(caps)

    def pump(self, deadline: float, extra: tuple[int, ...] = ()) -> list[int]:
        """Read until all pipes close, an `extra` fd becomes readable, or the deadline; return ready extras."""
        while self.open or extra:
            wait = deadline - time.monotonic()
            if wait <= 0:
                return []
            ready, _, _ = select.select(list(self.open) + list(extra), [], [], wait)
            for fd in ready:
                if fd in self.open:
                    self._read(fd)
            hits = [fd for fd in ready if fd in extra]
            if hits:
                return hits
        return []

    def _read(self, fd: int) -> None:
        chunk = os.read(fd, _READ)
        if not chunk:
            self.open.discard(fd)
            return
        room = self.caps[fd] - len(self.data[fd])
        self.data[fd] += chunk[: max(room, 0)]
        self.dropped[fd] += max(len(chunk) - max(room, 0), 0)

    def text(self, fd: int) -> str:
        out = self.data[fd].decode("utf-8", "replace")
        return out + (f"\n...[{self.dropped[fd]} more bytes dropped]" if self.dropped[fd] else "")

    def close(self) -> None:
        for fd in self.caps:
            os.close(fd)


class Zygote:
    """Runs jobs one at a time: fork, wait with a deadline, collect, sweep, judge."""

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg
        self.uid: int | None = cfg.get("uid")
        self.tmp_root: str = cfg["tmp_root"]
        # Built once (seccomp filter, Landlock ABI); each forked child applies it to itself.
        self.wall = wall.Wall(cfg["wall"]) if cfg.get("wall") else None

    def run(self, req: dict[str, Any]) -> dict[str, Any]:
        """One job, start to verdict: status, reason, payload, stdout, stderr, wall_s."""
        start = time.monotonic()
        nonce = secrets.token_hex(16)
        job_dir = tempfile.mkdtemp(prefix="job-", dir=self.tmp_root)
        if self.uid is not None:
            os.chown(job_dir, self.uid, self.uid)
        stdin_fd = os.memfd_create("stdin", 0)
        os.write(stdin_fd, req.get("stdin", "").encode())
        os.lseek(stdin_fd, 0, os.SEEK_SET)
        (out_r, out_w), (err_r, err_w), (res_r, res_w) = os.pipe(), os.pipe(), os.pipe()
        pid = os.fork()
        if pid == 0:
            child.main(req, self.cfg, job_dir, nonce, stdin_fd, out_w, err_w, res_w, self.wall)
        for fd in (stdin_fd, out_w, err_w, res_w):
            os.close(fd)
        cap = int(req.get("max_output", 1 << 16))
        col = Collector({out_r: cap, err_r: cap, res_r: int(req.get("max_result", 1 << 26))})
        status, timed_out = self._wait(pid, col, start + float(req["timeout_s"]))
        self._sweep(pid)
        col.pump(time.monotonic() + 1.0)  # what was written before the kill
        col.close()
        shutil.rmtree(job_dir, ignore_errors=True)
        verdict = child.verdict(status, timed_out, col.data[res_r], nonce, float(req["timeout_s"]))
        verdict.update(stdout=col.text(out_r), stderr=col.text(err_r), wall_s=time.monotonic() - start)
        return verdict

    def _wait(self, pid: int, col: Collector, deadline: float) -> tuple[int | None, bool]:
        """Exit status of the child (None if killed at the deadline), and whether it timed out."""
        pidfd = os.pidfd_open(pid)
        try:
            hits = col.pump(deadline, (pidfd,))
        finally:
            os.close(pidfd)
        if not hits:
            _kill_group(pid)
        _, status = os.waitpid(pid, 0)
        return status, not hits

    def _sweep(self, pid: int) -> None:
        """Kill everything the program left running; reap; remove its files outside the job dir.

        Why this finds every leftover: we are a child subreaper, so any orphaned descendant of
        the program, even one that called setsid(), is reparented to us.
        """
        _kill_group(pid)
        for _ in range(500):  # a fork bomb adds processes while we kill
            kids = _children()
            if not kids:
                break
            for kid in kids:
                _kill_group(kid)
            _reap()
        if self.uid is not None:
            for folder in self.cfg.get("sweep_dirs", []):
                _remove_owned(folder, self.uid)


def _kill_group(pgid: int) -> None:
    for target in (-pgid, pgid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, signal.SIGKILL)


def _children() -> list[int]:
    """Our live child processes (not zombies: those are reaped)."""
    _reap()
    me, kids = os.getpid(), []
    try:
        for tid in os.listdir(f"/proc/{me}/task"):  # orphans may be adopted by any of our threads
            with open(f"/proc/{me}/task/{tid}/children", "rb") as fh:
                kids += [int(p) for p in fh.read().split()]
    except FileNotFoundError:  # kernels without CONFIG_PROC_CHILDREN: scan /proc
        return [p for p in _all_pids() if _ppid(p) == me]
    return kids


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _kill_uid(uid: int) -> None:
    """Fork a helper that becomes `uid` and signals all of that uid's processes (stale leftovers)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            for _ in range(50):
                try:
                    os.kill(-1, signal.SIGKILL)  # every process of this uid except ourselves
                except ProcessLookupError:
                    break
                time.sleep(0.001)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _reap() -> None:
    """We are a child subreaper: collect every orphaned descendant that has exited."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _remove_owned(folder: str, uid: int) -> None:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        try:
            if entry.stat(follow_symlinks=False).st_uid != uid:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        except OSError:
            pass


def main() -> None:
    cfg = json.loads(sys.argv[1])
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    _LIBC.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    for name in cfg.get("preload", []):
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - a missing preload only costs speed
            pass
    zygote = Zygote(cfg)
    if cfg.get("uid") is not None:
        _kill_uid(cfg["uid"])  # leftovers of a previous zygote of this slot
    write_msg(proto_out, {"ready": True, "pid": os.getpid()})
    while (req := read_msg(proto_in)) is not None:
        try:
            reply = zygote.run(req)
        except Exception as exc:  # noqa: BLE001 - a harness bug must not look like a hostile program
            reply = {"status": "error", "reason": f"sandbox harness error: {type(exc).__name__}: {exc}"}
        write_msg(proto_out, reply)


if __name__ == "__main__":
    main()
