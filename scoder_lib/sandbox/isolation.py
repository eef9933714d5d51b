"""Which isolation a sandbox worker starts in, and how: bubblewrap where it works, else rlimits.

A `Plan` says how slots of one mode start: the command prefix (bwrap and its binds), whether
programs get a private uid, their process limit, and the soft in-process guards. See the threat
model in `scoder_lib.sandbox.execution`.
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scoder_lib.core.logs import get_logger

log = get_logger(__name__)

ISOLATIONS = ("auto", "bwrap", "rlimits")
_REPO = Path(__file__).resolve().parents[2]
_UID_BASE = 0x4000_0000  # private uids: base + (host pid << 9) + slot number, never a real account
NPROC = 256  # processes + threads per program
_KEEP_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")


class SandboxUnavailable(RuntimeError):
    """The requested isolation cannot be provided on this machine."""


@dataclass(frozen=True)
class Plan:
    """How slots of one isolation mode are started: command prefix and zygote config."""

    mode: str
    prefix: tuple[str, ...]
    uid_drop: bool
    nproc: int  # RLIMITNPROC for programs; 0 where the kernel would not enforce it (root's own uid)
    guard: dict[str, Any]
    tmp_root: str | None  # None: a per-pool folder on the host


def isolation_in_force(isolation: str = "auto") -> str:
    """'bwrap' or 'rlimits': what `isolation` resolves to here ('bwrap' raises if unusable)."""
    if isolation not in ISOLATIONS:
        raise ValueError(f"isolation must be one of {ISOLATIONS}, got {isolation!r}")
    if isolation == "rlimits":
        return "rlimits"
    ok, why = bwrap_status()
    if ok:
        return "bwrap"
    if isolation == "bwrap":
        raise SandboxUnavailable(
            f"isolation 'bwrap' requested but bubblewrap is unusable here: {why} (Debian: apt-get install bubblewrap)"
        )
    return "rlimits"


def isolation_details(isolation: str = "auto") -> dict[str, Any]:
    """What a report should say about the isolation: mode, uid change, soft guards."""
    plan = plan_for(isolation_in_force(isolation))
    return {
        "isolation": plan.mode,
        "private_uid": plan.uid_drop,
        "soft_guard": sorted(k for k, v in plan.guard.items() if v and k != "protected"),
        "bwrap_reason": bwrap_status()[1],
    }


def is_root() -> bool:
    return os.geteuid() == 0


def private_uid(slot: int) -> int:
    return _UID_BASE + ((os.getpid() & 0x3FFFFF) << 9) + slot


def _needed_paths() -> list[str]:
    """Folders the sandboxed interpreter must read: its prefixes, sys.path, this repository."""
    paths = {
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        str(_REPO),
        os.path.dirname(os.path.realpath(sys.executable)),
    }
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
    base = [
        exe,
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--perms",
        "1777",
        "--tmpfs",
        "/dev/shm",
        "--proc",
        "/proc",
        "--perms",
        "1777",
        "--size",
        str(1 << 30),
        "--tmpfs",
        "/tmp",
        *_masks(_needed_paths()),
        "--unshare-net",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--chdir",
        "/tmp",
    ]
    if is_root():  # keep only what the zygote needs to set up and sweep after a program
        base += ["--cap-drop", "ALL"] + [
            a
            for c in ("SETUID", "SETGID", "CHOWN", "KILL", "DAC_OVERRIDE", "FOWNER")
            for a in ("--cap-add", f"CAP_{c}")
        ]
    else:
        base += ["--unshare-user"]
    return tuple(base) + ("--",)


_PROBE = (
    "import os,sys\nu=int(sys.argv[1])\nif u>=0:\n os.setgroups([]);os.setresgid(u,u,u);os.setresuid(u,u,u)\n"
    "import decimal, json, unittest\nprint('sandbox-ok')"
)


def probe(prefix: tuple[str, ...], uid: int | None) -> tuple[bool, str]:
    """Run a tiny program the way a zygote would start; True if it prints the ok line."""
    cmd = [*prefix, sys.executable, "-s", "-P", "-c", _PROBE, str(-1 if uid is None else uid)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=program_env())
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    if "sandbox-ok" in out.stdout:
        return True, "ok"
    return False, (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1][:200]


@functools.cache
def bwrap_status() -> tuple[bool, str]:
    """Probed once per process: can we start a bubblewrap sandbox here?"""
    if shutil.which("bwrap") is None:
        return False, "bwrap not found on PATH"
    return probe(_bwrap_prefix(False), None)


@functools.cache
def plan_for(mode: str) -> Plan:
    """The plan for a mode; where we are root, prefer a private uid if Python stays importable under it."""
    probe_uid = private_uid(511)
    prefix = _bwrap_prefix(True) if mode == "bwrap" else ()
    uid_drop = is_root() and probe(prefix, probe_uid)[0]
    if not uid_drop and mode == "bwrap":
        prefix = _bwrap_prefix(False)
    # RLIMITNPROC binds a private uid, or an unprivileged user inside bwrap's user namespace; root's
    # own uid is exempt, and outside a namespace the count would include all the user's processes.
    nproc_ok = uid_drop or (not is_root() and mode == "bwrap")
    guard: dict[str, Any] = {
        "net": mode == "rlimits",
        "fs": mode == "rlimits" and not uid_drop,
        "max_forks": None if nproc_ok else NPROC,
        "protected": [os.getpid()],
    }
    if mode == "rlimits" and not uid_drop:
        log.warning("sandbox: rlimits mode without a private uid; only a soft in-process guard protects files")
    return Plan(mode, prefix, uid_drop, NPROC if nproc_ok else 0, guard, "/tmp" if mode == "bwrap" else None)


def program_env() -> dict[str, str]:
    """The whole environment programs see: no API keys, no tokens, nothing from the caller but locale and PATH."""
    env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    # Deterministic set order across runs; one BLAS thread; no GUI backends.
    env.update(
        PYTHONHASHSEED="0",
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONIOENCODING="utf-8",
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        MPLBACKEND="Agg",
    )
    return env
