"""The 'landlock' mode's wall: Landlock and seccomp, applied in each program's child before it runs.

Both mechanisms need no privilege, are inherited by every process the program starts (across
execve, so `subprocess`, `curl` or a compiled binary are bound too) and cannot be lifted:
- Landlock (kernel >= 5.13): the file system shrinks to an allow-list, read-only for the system and
  the interpreter, read-write for the program's job folder; TCP bind/connect are refused (ABI >= 4);
  signals and abstract unix sockets reach only the program's own processes (ABI >= 6); ptrace and
  /proc peeking into processes outside the program are refused (any ABI).
- seccomp (libseccomp through `pyseccomp`): no sockets of any family (a pathname unix socket such as
  a user's session bus is a way out that Landlock does not see; `socketpair` stays allowed), no
  io_uring (it opens sockets without the socket syscall), no ptrace, kernel keyrings, bpf, module
  loading, namespaces or mounts.

Landlock is called through its three syscalls: the `landlock` package (1.0.0.dev5) handles only
file rules (no TCP, no scopes) and reads a stale errno as failure. See the threat model in
`scoder_lib.sandbox.execution`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from typing import Any

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.syscall.restype = ctypes.c_long
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # one number on every architecture
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# linux/landlock.h: file-system access rights, and the ABI that introduced the highest of them.
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1, 2, 4, 8
TRUNCATE, IOCTL_DEV = 1 << 14, 1 << 15  # ABI 3, ABI 5; bit 13 is REFER (ABI 2)
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}
_FS_LATEST = (1 << 16) - 1  # ABI >= 5
_FILE_ONLY = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # what a rule on a non-directory may hold
_NET_TCP = 1 | 2  # bind, connect (ABI >= 4)
_SCOPE_ALL = 1 | 2  # abstract unix sockets, signals (ABI >= 6)

READ = READ_FILE | READ_DIR | EXECUTE
DEVICE = READ_FILE | WRITE_FILE | TRUNCATE
# Refused by seccomp with EPERM: ways past Landlock (sockets, io_uring), into other processes, or into the kernel.
_DENIED = (
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1  # the kernel's struct is packed
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _syscall(nr: int, *args: Any) -> int:
    ctypes.set_errno(0)
    res = _LIBC.syscall(nr, *args)
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"landlock syscall {nr}: {os.strerror(err)}")
    return res


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where Landlock is missing or disabled."""
    try:
        return _syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    except OSError:
        return 0


def mechanisms(abi: int) -> dict[str, bool]:
    """What a built `Wall` enforces at this ABI (it is never built without its seccomp filter)."""
    return {"landlock_files": abi >= 1, "landlock_tcp": abi >= 4, "landlock_signals": abi >= 6, "seccomp_sockets": True}


class Wall:
    """Built once in the zygote (seccomp filter, ABI); `apply` runs in each forked child."""

    def __init__(self, cfg: dict[str, Any]):
        # max_abi: behave as an older kernel would (tests of what holds on, e.g., Ubuntu 22.04's ABI 1).
        self.abi = min(landlock_abi(), int(cfg.get("max_abi", 1 << 16)))
        if self.abi < 1:
            raise OSError(errno.ENOSYS, "Landlock is not available in this kernel")
        self.fs = _FS_BY_ABI.get(self.abi, _FS_LATEST)
        self.rules = [(p, READ) for p in cfg.get("read", [])] + [(p, DEVICE) for p in cfg.get("devices", [])]
        self.filter = _seccomp_filter()

    def apply(self, job_dir: str) -> None:
        """Confine this (single-threaded) process and everything it will start; raise if any step fails."""
        attr = _RulesetAttr(self.fs, _NET_TCP if self.abi >= 4 else 0, _SCOPE_ALL if self.abi >= 6 else 0)
        ruleset = _syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), 0)
        try:
            for path, access in [*self.rules, (job_dir, self.fs), (f"/proc/{os.getpid()}", READ_FILE | READ_DIR)]:
                self._allow(ruleset, path, access)
            if _LIBC.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
            _syscall(_SYS_RESTRICT_SELF, ruleset, 0)
        finally:
            os.close(ruleset)
        self.filter.load()

    def _allow(self, ruleset: int, path: str, access: int) -> None:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except (FileNotFoundError, PermissionError):
            return  # an optional folder (/lib32 ...) this system lacks, or one this user cannot reach anyway
        try:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                access &= _FILE_ONLY
            rule = _PathBeneath(access & self.fs, fd)
            _syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0)
        finally:
            os.close(fd)


def _seccomp_filter() -> Any:
    """Allow everything but sockets (EACCES, as a firewall would say) and the `_DENIED` calls (EPERM)."""
    try:
        import pyseccomp  # noqa: PLC0415 - its import runs ldconfig (~0.1 s); only the landlock mode pays
    except (ImportError, RuntimeError, OSError) as exc:  # no package, or no libseccomp on this system
        raise OSError(errno.ENOSYS, f"pyseccomp/libseccomp is not available: {exc}") from exc
    filt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    filt.add_rule(pyseccomp.ERRNO(errno.EACCES), "socket")
    for name in _DENIED:
        filt.add_rule(pyseccomp.ERRNO(errno.EPERM), name)
    return filt
