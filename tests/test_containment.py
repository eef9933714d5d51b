"""Hostile programs that reach past the Python interpreter (child binaries, the user's home, the host's
processes), in every isolation mode this machine offers, with and without a private uid.

Each attack would pass if it worked; contained, it fails with a reason, leaves nothing running and
the harness keeps working. Where a mode does not claim to wall an attack off (`isolation.contained`,
e.g. rlimits and the network) the test is a strict xfail: the table of what each mode defends is
checked both ways.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import descendants, listener, strays

from scoder_lib.core.config import REPO_ROOT
from scoder_lib.sandbox import execution, isolation, wall
from scoder_lib.sandbox.execution import ExecResult, Job, run_many
from scoder_lib.sandbox.harness import wall as harness_wall

BWRAP_OK, BWRAP_WHY = isolation.bwrap_status()
LANDLOCK_OK, LANDLOCK_WHY, _ = isolation.landlock_status()
_NO_BWRAP = pytest.mark.skipif(not BWRAP_OK, reason=f"bwrap unusable: {BWRAP_WHY}")
_NO_LANDLOCK = pytest.mark.skipif(not LANDLOCK_OK, reason=f"landlock unusable: {LANDLOCK_WHY}")
VARIANTS = [  # (mode, whether a uid change is allowed, Landlock ABI cap)
    pytest.param(("bwrap", True, None), id="bwrap", marks=_NO_BWRAP),
    pytest.param(("landlock", True, None), id="landlock", marks=_NO_LANDLOCK),
    pytest.param(("landlock", False, None), id="landlock-no-uid-change", marks=_NO_LANDLOCK),
    pytest.param(("landlock", False, 1), id="landlock-abi1-no-uid-change", marks=_NO_LANDLOCK),
    pytest.param(("rlimits", True, None), id="rlimits"),
    pytest.param(("rlimits", False, None), id="rlimits-no-uid-change"),
]


def _fresh_plans() -> None:
    isolation.plan_for.cache_clear()
    execution.shutdown()


@pytest.fixture(params=VARIANTS)
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A mode; '-no-uid-change' runs programs under our own uid, as a user who is not root would;
    '-abi1' applies only what Landlock's first ABI (kernel 5.13, Ubuntu 22.04) offers."""
    name, uid_change, max_abi = request.param
    if not uid_change:
        # As root that is the hard case: file permissions no longer stop the program, only the wall does.
        monkeypatch.setattr(isolation, "is_root", lambda: False)
    if max_abi is not None:
        config = {**wall.wall_config(), "max_abi": max_abi}
        monkeypatch.setattr(isolation, "wall_config", lambda: config)
        status = (True, "ok", {"abi": max_abi, **harness_wall.mechanisms(max_abi)})
        monkeypatch.setattr(isolation, "landlock_status", lambda: status)
    _fresh_plans()
    yield name
    monkeypatch.undo()
    _fresh_plans()


@pytest.fixture
def warm(mode: str) -> set[int]:
    assert _one(mode, "pass").passed
    return descendants()


def _one(mode: str, program: str) -> ExecResult:
    return run_many([Job(program=program)], workers=1, isolation=mode, timeout_s=10)[0]


def _expect(request: pytest.FixtureRequest, mode: str, what: str) -> None:
    """Turn the test into a strict xfail where `mode` does not claim to contain `what` here."""
    if not isolation.contained(mode)[what]:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"{mode} does not wall off {what} here"))


def _assert_contained(mode: str, result: ExecResult, before: set[int]) -> None:
    assert not result.passed and result.status == "failed" and result.reason, result
    assert not strays(before), "processes left behind"
    assert _one(mode, "print('still here')").stdout == "still here\n"


@pytest.fixture
def home_secret() -> Iterator[tuple[Path, str]]:
    """A 0600 file in the invoking user's home, and its content."""
    token = f"secret-{uuid.uuid4().hex}"
    path = Path.home() / f".scoder-test-{uuid.uuid4().hex}"
    path.write_text(token)
    path.chmod(0o600)
    yield path, token
    path.unlink()


@pytest.mark.parametrize("how", ["python", "child"])
def test_reading_a_secret_in_home(
    mode: str, warm: set[int], home_secret: tuple[Path, str], how: str, request: pytest.FixtureRequest
) -> None:
    _expect(request, mode, "files")
    path, token = home_secret
    program = (
        f"print(open({str(path)!r}).read())"
        if how == "python"
        else f"import subprocess\nprint(subprocess.run(['cat', {str(path)!r}], check=True, capture_output=True).stdout)"
    )
    result = _one(mode, program)
    assert token not in result.stdout + result.stderr + result.reason
    _assert_contained(mode, result, warm)


@pytest.mark.parametrize("client", ["python", "curl"])
def test_connecting_through_a_child_process(
    mode: str, warm: set[int], client: str, request: pytest.FixtureRequest
) -> None:
    if client == "curl" and shutil.which("curl") is None:
        pytest.skip("curl not installed")
    _expect(request, mode, "network")
    with listener(timeout=5) as (port, accepted):
        connect = (
            f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3).sendall(b'GET / HTTP/1.0')"
        )
        argv = (
            [sys.executable, "-c", connect]
            if client == "python"
            else ["curl", "-s", "-m", "3", f"http://127.0.0.1:{port}/"]
        )
        result = _one(mode, f"import subprocess\nsubprocess.run({argv!r}, check=True, timeout=8)")
    assert accepted == []
    _assert_contained(mode, result, warm)


def test_writing_outside_the_temp_folder_through_a_child_process(
    mode: str, warm: set[int], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    _expect(request, mode, "files")
    token = uuid.uuid4().hex
    first = tmp_path / f"escape-{token}"
    others = [Path(f"/tmp/escape-{token}"), Path.home() / f"escape-{token}", REPO_ROOT / f"escape-{token}"]
    script = "".join(f"echo x > {t} 2>/dev/null; " for t in others) + f"echo x > {first}"
    result = _one(mode, f"import subprocess\nsubprocess.run(['sh', '-c', {script!r}], check=True)")
    leaked = [t for t in [first, *others] if t.exists()]
    for t in leaked:
        t.unlink()
    assert leaked == []
    _assert_contained(mode, result, warm)


@pytest.fixture
def victim() -> Iterator[subprocess.Popen]:
    """A process of ours, outside the sandbox, that a program should neither see nor signal."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("how", ["python", "child"])
def test_signalling_a_host_process(
    mode: str, warm: set[int], victim: subprocess.Popen, how: str, request: pytest.FixtureRequest
) -> None:
    _expect(request, mode, "signals")
    pid = victim.pid
    program = (
        f"import os\nos.kill({pid}, {int(signal.SIGKILL)})"
        if how == "python"
        else f"import subprocess\nsubprocess.run(['sh', '-c', 'kill -9 {pid}'], check=True)"
    )
    result = _one(mode, program)
    assert victim.poll() is None, "the host process was killed"
    _assert_contained(mode, result, warm | {pid})


def test_listing_host_processes(
    mode: str, warm: set[int], victim: subprocess.Popen, request: pytest.FixtureRequest
) -> None:
    _expect(request, mode, "process_list")
    result = _one(mode, f"import os\nassert '{victim.pid}' in os.listdir('/proc')")
    _assert_contained(mode, result, warm | {victim.pid})


def test_no_bwrap_means_the_landlock_wall_and_strict_refuses_rlimits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(isolation, "bwrap_status", lambda: (False, "bwrap not found on PATH"))
    if LANDLOCK_OK:
        assert isolation.isolation_in_force("auto") == "landlock"
        assert isolation.isolation_in_force("strict") == "landlock"
        assert "Landlock" in isolation.banner("auto") and "apt install bubblewrap" in isolation.banner("auto")
        assert run_many(["print(1)"], isolation="auto")[0].isolation == "landlock"
        details = isolation.isolation_details("auto")
        assert details["isolation"] == "landlock" and "seccomp_sockets" in details["wall"]
    monkeypatch.setattr(isolation, "landlock_status", lambda: (False, "Landlock is not available", {}))
    assert isolation.isolation_in_force("auto") == "rlimits"
    assert isolation.banner("auto").startswith("WARNING") and "apt install bubblewrap" in isolation.banner("auto")
    with pytest.raises(isolation.SandboxUnavailable, match="strict"):
        isolation.isolation_in_force("strict")
    with pytest.raises(isolation.SandboxUnavailable, match="strict"):
        run_many(["print(1)"], isolation="strict")
    assert isolation.banner("strict").startswith("UNTRUSTED CODE WILL NOT RUN")
    with pytest.raises(isolation.SandboxUnavailable, match="landlock"):
        isolation.isolation_in_force("landlock")


def test_strict_refuses_a_wall_with_gaps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Landlock before ABI 6 (kernel 6.12) cannot scope signals: without a uid change, 'strict' refuses it."""
    monkeypatch.setattr(isolation, "bwrap_status", lambda: (False, "bwrap not found on PATH"))
    monkeypatch.setattr(isolation, "landlock_status", lambda: (True, "ok", {"abi": 4, **harness_wall.mechanisms(4)}))
    monkeypatch.setattr(isolation, "is_root", lambda: False)
    isolation.plan_for.cache_clear()
    try:
        assert isolation.isolation_in_force("auto") == "landlock"
        assert "not walled: signals" in isolation.banner("auto")
        with pytest.raises(isolation.SandboxUnavailable, match="not walled: signals"):
            isolation.isolation_in_force("strict")
    finally:
        isolation.plan_for.cache_clear()


def test_without_bwrap_on_path_auto_picks_the_wall() -> None:
    """No monkeypatching: a process whose PATH has no bwrap resolves 'auto' on its own."""
    code = "from scoder_lib.sandbox import isolation\nprint(isolation.isolation_in_force('auto'))"
    env = {**os.environ, "PATH": "/nonexistent", "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.stdout.strip() == ("landlock" if LANDLOCK_OK else "rlimits"), out.stderr[-2000:]
