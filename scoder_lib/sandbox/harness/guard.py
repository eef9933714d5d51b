"""A soft, in-interpreter guard for programs that run without a stronger wall (rlimits mode).

Installed with `sys.addaudithook` before the program starts. It refuses network sockets, writes
outside the job folder, signals to processes that are not the program's own, peeking into other
processes' /proc entries, and more than `max_forks` forks. It is soft: a program can get past it
by running another binary (subprocess) or by calling libc through ctypes. The bwrap and landlock
modes do not need it; see the threat model in `scoder_lib.execution`.
"""

from __future__ import annotations

import mmap
import os
import re
import socket
import struct
import sys
from typing import Any

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_EVENTS = {
    "os.remove": (0,),
    "os.rmdir": (0,),
    "os.mkdir": (0,),
    "os.rename": (0, 1),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.truncate": (0,),
    "os.symlink": (1,),
    "os.link": (1,),
    "os.utime": (0,),
    "shutil.rmtree": (0,),
    "shutil.copyfile": (1,),
    "shutil.move": (1,),
}
_PROC = re.compile(r"^/proc/(\d+)(/|$)")


def install(job_dir: str, *, net: bool, fs: bool, max_forks: int | None, protected: set[int]) -> None:
    """Refuse the listed behaviours from now on, in this process and the processes it forks."""
    job = os.path.realpath(job_dir)
    counter = mmap.mmap(-1, 8) if max_forks is not None else None  # shared with forked children

    def inside(path: Any) -> bool:
        if isinstance(path, int):
            return True  # an already-open descriptor
        real = os.path.realpath(os.fsdecode(path))
        return real == job or real.startswith(job + os.sep) or real == os.devnull

    def deny(what: str) -> None:
        raise PermissionError(f"sandbox: {what} is not allowed")

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if net and event == "socket.__new__" and args[1] != socket.AF_UNIX:
            deny("network access")
        if not fs:
            pass
        elif event == "open":
            _check_open(args, inside, deny)
        elif event in _PATH_EVENTS and not all(inside(args[i]) for i in _PATH_EVENTS[event]):
            deny(f"{event} outside the job folder")
        elif event in ("os.kill", "os.killpg"):
            _check_kill(event, args[0], protected, deny)
        if counter is not None and event in ("os.fork", "os.forkpty", "subprocess.Popen", "os.posix_spawn"):
            _count_fork(counter, max_forks, deny)

    sys.addaudithook(hook)


def _check_open(args: tuple[Any, ...], inside: Any, deny: Any) -> None:
    path, _mode, flags = args
    if isinstance(path, int):
        return
    real = os.path.realpath(os.fsdecode(path))
    match = _PROC.match(real)
    if match and int(match.group(1)) != os.getpid():
        deny("reading another process's /proc entry")
    if flags & _WRITE_FLAGS and not inside(path):
        deny(f"writing {real} (outside the job folder)")


def _check_kill(event: str, target: int, protected: set[int], deny: Any) -> None:
    own_group = os.getpgid(0)
    if (
        target in protected
        or target in (-1, 1)
        or (event == "os.killpg" and target != own_group)
        or (target < -1 and -target != own_group)
    ):
        deny(f"{event}({target}) on a process that is not the program's own")


def _count_fork(counter: mmap.mmap, limit: int, deny: Any) -> None:
    done = struct.unpack_from("q", counter)[0] + 1
    struct.pack_into("q", counter, 0, done)
    if done > limit:
        deny(f"starting more than {limit} processes")
