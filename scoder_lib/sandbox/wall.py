"""The parent side of the 'landlock' mode: the allow-list programs may read, and a probe of what holds.

The wall itself (Landlock + seccomp, applied in each forked child) is `harness/wall.py`. Here we
decide which folders a program may read (the system, the interpreter and its site-packages, the
harness; never $HOME, the repository or /tmp) and check once per process, in a throwaway child
that applies the same wall, that it really refuses a read outside, a write outside and a socket.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

_HARNESS = Path(__file__).resolve().parent / "harness"
_REPO = Path(__file__).resolve().parents[2]
# System folders a program (or a binary it starts) reads: libraries, executables, configuration, CPU count.
_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/sys/devices/system/cpu")
_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
# Machine-wide /proc files that programs read for sizes and counts (psutil.virtual_memory, cpu_percent):
# nothing in them belongs to another process. /proc itself, and every other pid's entry, stays closed.
_PROC_INFO = ("/proc/cpuinfo", "/proc/meminfo", "/proc/stat", "/proc/loadavg", "/proc/uptime", "/proc/version")


def read_paths() -> list[str]:
    """Folders a program may read and execute: system, interpreter prefixes, site-packages, the harness."""
    python = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    python |= {os.path.dirname(os.path.realpath(sys.executable)), *site.getsitepackages()}
    python |= {p for p in sysconfig.get_paths().values() if p}
    python |= {os.path.realpath(p) for p in python}
    # A prefix that holds a home, the repository (with its .env files) or /tmp would open the wall.
    private = (os.path.realpath(os.path.expanduser("~")), os.path.realpath(_REPO), "/tmp", "/home", "/root")
    paths = {p for p in python if os.path.exists(p) and not any(_holds(p, q) for q in private)}
    return [*_SYSTEM, *_PROC_INFO, *sorted(paths), str(_HARNESS)]


def _holds(folder: str, path: str) -> bool:
    """Whether `path` is `folder` or lies beneath it."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def wall_config() -> dict[str, list[str]]:
    """The zygote's `wall` config: what its children may read, and the devices they may write."""
    return {"read": read_paths(), "devices": list(_DEVICES)}


_PROBE = """
import json, os, socket, sys
cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["repo"])
from scoder_lib.sandbox.harness import wall
w = wall.Wall(cfg["wall"])
w.apply(cfg["job"])
with open(os.path.join(cfg["job"], "written"), "w") as fh:
    fh.write("ok")
for name, attempt in (("read outside", lambda: open(cfg["outside"]).read()),
                      ("write outside", lambda: open(cfg["outside"] + "-new", "w")),
                      ("socket", lambda: socket.socket())):
    try:
        attempt()
    except PermissionError:
        continue
    sys.exit(name + " was not refused")
print("sandbox-ok", json.dumps({"abi": w.abi, **wall.mechanisms(w.abi)}))
"""


@functools.cache
def landlock_status() -> tuple[bool, str, dict[str, Any]]:
    """Probed once per process: (usable, why not, {abi, mechanism: in force}) for the 'landlock' mode."""
    root = tempfile.mkdtemp(prefix="scoder-wall-probe-")
    try:
        job = os.path.join(root, "job")
        os.mkdir(job)
        outside = os.path.join(root, "outside")
        Path(outside).write_text("secret")
        cfg = {"repo": str(_REPO), "wall": wall_config(), "job": job, "outside": outside}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        try:
            out = subprocess.run(
                [sys.executable, "-s", "-P", "-c", _PROBE, json.dumps(cfg)],
                capture_output=True,
                text=True,
                timeout=30,
                env=env,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"{type(exc).__name__}: {exc}", {}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for line in out.stdout.splitlines():
        if line.startswith("sandbox-ok "):
            return True, "ok", json.loads(line.removeprefix("sandbox-ok "))
    why = (out.stderr.strip().splitlines() or out.stdout.strip().splitlines() or [f"exit {out.returncode}"])[-1]
    return False, why[:200], {}
