"""Running a module under a distributed launcher (accelerate, torchrun, deepspeed), from this interpreter.

`train.launcher` names the launcher as a user types it ("accelerate launch --num_processes 2 --cpu");
`plan_launch` turns it into a command that does not depend on PATH: the launcher's program is run
as a module of the running interpreter (`accelerate` -> `python -m accelerate.commands.launch`,
`torchrun` -> `python -m torch.distributed.run`, `deepspeed` -> `python -m deepspeed.launcher.runner`),
so it works from a notebook kernel or papermill that runs the venv's Python without its `bin/` on
PATH, and the processes it starts import this same `scoder_lib`.

One rewrite, logged: `accelerate launch --cpu --num_processes N` (N > 1) starts a single process
unless it runs under mpirun (accelerate's simple launcher), which silently trains without any data
parallelism. It is run as accelerate's multi-process launcher (torch.distributed.run) with
ACCELERATE_USE_CPU=true instead: N processes, DDP over gloo.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import scoder_lib
from scoder_lib.core.logs import get_logger

log = get_logger(__name__)

# launcher program -> (module that is its CLI, how it is told that the script is a module)
PROGRAMS = {
    "accelerate": ("accelerate.commands.launch", "-m"),  # `accelerate launch ...`
    "torchrun": ("torch.distributed.run", "-m"),
    "deepspeed": ("deepspeed.launcher.runner", "--module"),
}
PYTHONS = ("python", "python3", f"python3.{sys.version_info.minor}")
TAIL_LINES = 40  # of the launched output, quoted in the error when it fails


class LaunchError(RuntimeError):
    """The launcher could not be resolved, or the launched job failed."""


@dataclass(frozen=True)
class LaunchPlan:
    launcher: str  # as configured
    argv: list[str]  # the command up to the module to run
    module_flag: str  # "-m" or "--module": how this launcher is told its script is a module
    processes: int | None  # the world size the arguments ask for (None: they do not say)
    env: dict[str, str] = field(default_factory=dict)  # added to the launched environment

    def command(self, module: str, *args: str) -> list[str]:
        return [*self.argv, self.module_flag, module, *args]


def plan_launch(launcher: str) -> LaunchPlan:
    """The command that runs `launcher` with this interpreter (no PATH look-up for known launchers)."""
    words = shlex.split(launcher)
    if not words:
        raise LaunchError("train.launcher is empty")
    prog, rest = words[0], words[1:]
    if prog in PYTHONS:  # a bare "python" is this interpreter; a path to another one is taken as given
        return LaunchPlan(launcher, [sys.executable, *rest], "-m", 1)
    if prog == "accelerate":
        if not rest or rest[0] != "launch":
            raise LaunchError(f"train.launcher {launcher!r}: accelerate needs its 'launch' command")
        return _accelerate(launcher, rest[1:])
    if prog in PROGRAMS:
        module, flag = PROGRAMS[prog]
        _require(module, launcher)
        processes = _torchrun_processes(rest) if prog == "torchrun" else None
        return LaunchPlan(launcher, [sys.executable, "-m", module, *rest], flag, processes)
    found = shutil.which(prog, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if found is None:
        raise LaunchError(
            f"train.launcher {launcher!r}: no program {prog!r} beside {sys.executable} or on PATH "
            f"(known launchers run from this interpreter: {', '.join(PROGRAMS)}, python)"
        )
    # e.g. "mpirun -n 2 python": a bare python word means this interpreter.
    argv = [found, *(sys.executable if w in PYTHONS else w for w in rest)]
    return LaunchPlan(launcher, argv, "-m", None)


def _require(module: str, launcher: str) -> None:
    if importlib.util.find_spec(module.split(".")[0]) is None:
        raise LaunchError(f"train.launcher {launcher!r} needs the {module.split('.')[0]!r} package in {sys.executable}")


def _accelerate(launcher: str, args: list[str]) -> LaunchPlan:
    _require(PROGRAMS["accelerate"][0], launcher)
    ap = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    ap.add_argument("--num_processes", "--num-processes", type=int)
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--mpirun_hostfile", "--mpirun-hostfile")
    ap.add_argument("--main_process_port", "--main-process-port")
    known, _ = ap.parse_known_args(args)
    argv = [sys.executable, "-m", PROGRAMS["accelerate"][0], *args]
    if not (known.cpu and (known.num_processes or 1) > 1 and known.mpirun_hostfile is None):
        return LaunchPlan(launcher, argv, "-m", known.num_processes)
    # Why: accelerate's simple launcher (what --cpu selects) starts N CPU processes only under mpirun.
    args = ["--multi_gpu" if a == "--cpu" else a for a in args]
    if known.main_process_port is None:  # another job's default port 29500 must not stall this one
        args = ["--main_process_port", str(free_port()), *args]
    log.info(
        "accelerate launch --cpu would start one process, not %d (it needs mpirun for more): running "
        "accelerate's multi-process launcher with ACCELERATE_USE_CPU=true instead (DDP over gloo)",
        known.num_processes,
    )
    argv = [sys.executable, "-m", PROGRAMS["accelerate"][0], *args]
    return LaunchPlan(launcher, argv, "-m", known.num_processes, {"ACCELERATE_USE_CPU": "true"})


def _torchrun_processes(args: list[str]) -> int | None:
    ap = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    ap.add_argument("--nproc_per_node", "--nproc-per-node", default="1")
    ap.add_argument("--nnodes", default="1")
    known, _ = ap.parse_known_args(args)
    if known.nproc_per_node.isdigit() and known.nnodes.isdigit():
        return int(known.nproc_per_node) * int(known.nnodes)
    return None  # "gpu", "auto", or an elastic range "1:4"


def free_port() -> int:
    """A TCP port free on this host right now (for a rendezvous that must not collide)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(plan: LaunchPlan) -> dict[str, str]:
    """This environment, plus: this scoder_lib first on PYTHONPATH, this interpreter's bin/ first on PATH."""
    env = dict(os.environ)
    root = str(Path(scoder_lib.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [root, env.get("PYTHONPATH", "")] if p)
    env["PATH"] = os.pathsep.join(p for p in [str(Path(sys.executable).parent), env.get("PATH", "")] if p)
    return {**env, **plan.env}


def leave_process_group() -> None:
    """End this rank's process group (if one is open) while the interpreter is still whole; every rank calls it.

    Why: whatever still holds the group at exit (a sharded model, a DDP wrapper, the Trainer) is freed
    during interpreter shutdown, and gloo then aborts the process now and then ("terminate called
    without an active exception", SIGABRT) after the job's work is done: the launcher reports a failed
    job. Measured on a 2-core machine: 1 run in 12 of test_launch's FSDP job without this (7 in 25 with a
    print per rank), none in 60 with it. Call it after the objects that used the group are out of scope.
    """
    import torch.distributed as dist  # noqa: PLC0415 - torch is only loaded by the processes that train

    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()  # reference cycles (a Trainer and its callbacks) that still hold the group's tensors
    dist.barrier()  # no rank tears down its connections while another still sends
    dist.destroy_process_group()


def run_launched(plan: LaunchPlan, module: str, *args: str) -> None:
    """Run `module` under the plan, its output passed through; LaunchError (with its last lines) if it fails."""
    cmd = plan.command(module, *args)
    log.info("running under %r: %s", plan.launcher, shlex.join(cmd))
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    # A session of its own: an interrupt ends the launcher and every process it started, not just the launcher.
    proc = subprocess.Popen(
        cmd, env=launch_env(plan), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        for line in proc.stdout:
            sys.stderr.write(line)
            tail.append(line)
        rc = proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        raise
    if rc != 0:
        raise LaunchError(
            f"`{module}` under train.launcher {plan.launcher!r} failed (exit code {rc}); its last lines:\n"
            + "".join(tail)
        )
