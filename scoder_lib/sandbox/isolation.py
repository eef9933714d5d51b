"""Which isolation a sandbox worker starts in, and how: bubblewrap, else a Landlock wall, else rlimits.

Modes: 'bwrap' (namespaces), 'landlock' (Landlock + seccomp, no privilege or package needed beyond
libseccomp), 'rlimits' (limits and a soft audit hook: no wall). 'auto' takes the strongest that works
here; 'strict' does the same but refuses to run untrusted code without a wall. A `Plan` says how
slots of one mode start: the command prefix (bwrap and its binds), whether programs get a private
uid, their process limit, the wall's allow-list and the soft in-process guards. See the threat
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
from scoder_lib.sandbox.wall import landlock_status, wall_config

log = get_logger(__name__)

ISOLATIONS = ("auto", "strict", "bwrap", "landlock", "rlimits")
WALLS = ("bwrap", "landlock")  # the modes that 'strict' accepts (where `contained` is all True)
CONTAINED = ("files", "network", "signals", "process_list")
_REPO = Path(__file__).resolve().parents[2]
_UID_BASE = 0x4000_0000  # private uids: base + (host pid << 9) + slot number, never a real account
NPROC = 256  # processes + threads per program
_KEEP_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
_INSTALL = "apt install bubblewrap"


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
    wall: dict[str, list[str]] | None = None  # 'landlock': what the children may read (harness/wall.py)


def isolation_in_force(isolation: str = "auto") -> str:
    """The mode `isolation` resolves to here: 'bwrap', 'landlock' or 'rlimits'; raises if the asked wall is missing."""
    if isolation not in ISOLATIONS:
        raise ValueError(f"isolation must be one of {ISOLATIONS}, got {isolation!r}")
    if isolation == "rlimits":
        return "rlimits"
    if isolation in WALLS:
        ok, why = usable(isolation)
        if not ok:
            raise SandboxUnavailable(f"isolation {isolation!r} requested but it is unusable here: {why} ({_INSTALL})")
        return isolation
    for mode in WALLS:
        if usable(mode)[0] and (isolation == "auto" or all(contained(mode).values())):
            return mode
    if isolation == "strict":
        raise SandboxUnavailable(
            f"execution.isolation is 'strict' and no complete wall works here ({_why_not()}): {_INSTALL}"
        )
    _warn_no_wall()
    return "rlimits"


def usable(mode: str) -> tuple[bool, str]:
    """Whether a mode can start here, and why not ('rlimits' always can)."""
    if mode == "bwrap":
        return bwrap_status()
    if mode == "landlock":
        return landlock_status()[:2]
    return True, "ok"


def contained(mode: str) -> dict[str, bool]:
    """What a mode walls off here: other files (read, write), the network, other processes (signals, listing)."""
    if mode == "bwrap":
        return dict.fromkeys(CONTAINED, True)
    uid = plan_for(mode).uid_drop  # a private uid: file permissions and signal rules then protect the host
    if mode == "landlock":
        signals = uid or landlock_status()[2].get("landlock_signals", False)
        return {"files": True, "network": True, "signals": signals, "process_list": True}
    return {"files": uid, "network": False, "signals": uid, "process_list": False}


@functools.cache
def _warn_no_wall() -> None:
    log.warning("sandbox: NO wall around untrusted code (rlimits only): %s; %s", _why_not(), _INSTALL)


def _why_not() -> str:
    landlock = summary("landlock") if usable("landlock")[0] else landlock_status()[1]
    return f"bwrap: {bwrap_status()[1]}; landlock: {landlock}"


def isolation_details(isolation: str = "auto") -> dict[str, Any]:
    """What a report should say about the isolation: mode, the wall's mechanisms, uid change, soft guards."""
    plan = plan_for(isolation_in_force(isolation))
    _, ll_why, ll = landlock_status()
    return {
        "isolation": plan.mode,
        "summary": summary(plan.mode),
        "contained": contained(plan.mode),
        "wall": sorted(k for k, v in ll.items() if v is True) if plan.mode == "landlock" else [],
        "landlock_abi": ll.get("abi", 0),
        "private_uid": plan.uid_drop,
        "soft_guard": sorted(k for k, v in plan.guard.items() if v and k != "protected"),
        "bwrap_reason": bwrap_status()[1],
        "landlock_reason": ll_why,
    }


def summary(mode: str) -> str:
    """A few words for a report's front page: the mode and what holds it."""
    if mode == "bwrap":
        return "bwrap (namespaces: read-only root, hidden home, no network, own PID namespace)"
    if mode == "landlock":
        gaps = [k for k, v in contained(mode).items() if not v]
        abi = landlock_status()[2].get("abi", 0)
        return f"landlock (Landlock ABI {abi} + seccomp)" + (f"; not walled: {', '.join(gaps)}" if gaps else "")
    return "rlimits only (NO wall" + (": private uid)" if plan_for(mode).uid_drop else ")")


def banner(isolation: str = "auto") -> str:
    """One prominent line for the start of a run: which isolation will run untrusted code, how to get a stronger one."""
    try:
        mode = isolation_in_force(isolation)
    except SandboxUnavailable as exc:
        return f"UNTRUSTED CODE WILL NOT RUN: {exc}"
    line = f"Untrusted code runs in: {summary(mode)}"
    bwrap_ok, bwrap_why = bwrap_status()
    if mode == "bwrap":
        return line + "."
    if mode == "landlock":
        why = "chosen by execution.isolation" if bwrap_ok else f"bubblewrap is unusable: {bwrap_why}"
        return line + f" ({why}); for namespaces as well: {_INSTALL}."
    chosen = " (chosen by execution.isolation)" if isolation == "rlimits" else ""
    return (
        f"WARNING: {line}{chosen}; model-written programs can reach the network and, without a private uid, "
        f"read your files. Fix: {_INSTALL} (or a kernel with Landlock); execution.isolation: strict refuses instead."
    )


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
    soft = mode == "rlimits"  # the audit hook is all that stands in for a wall
    guard: dict[str, Any] = {
        "net": soft,
        "fs": soft and not uid_drop,
        "max_forks": None if nproc_ok else NPROC,
        "protected": [os.getpid()],
    }
    if soft and not uid_drop:
        log.warning("sandbox: rlimits mode without a private uid; only a soft in-process guard protects files")
    wall = wall_config() if mode == "landlock" else None
    tmp_root = "/tmp" if mode == "bwrap" else None
    return Plan(mode, prefix, uid_drop, NPROC if nproc_ok else 0, guard, tmp_root, wall)


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
