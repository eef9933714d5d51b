"""Trusted test drivers, run in the sandboxed child after the program has been executed.

A driver gets the program's globals and its JSON payload; it returns a JSON-able payload on
success or raises `DriverFailure` (a failed test, with a reason and a payload).
"""

from __future__ import annotations

import copy
import io
import json
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from . import codec
from .compare import evalplus_match, is_forged


class DriverFailure(Exception):
    """A test failed: `reason` says which, `payload` carries the details."""

    def __init__(self, reason: str, payload: Any = None):
        super().__init__(reason)
        self.reason, self.payload = reason, payload


class InputTimeout(BaseException):
    """One input ran past its time limit (BaseException: `except Exception` must not swallow it)."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def _raise(signum: int, frame: Any) -> None:
        raise InputTimeout(f"input timed out after {seconds:.2f}s")

    signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _entry(g: dict[str, Any], name: str) -> Callable[..., Any]:
    fn = g.get(name)
    if not callable(fn):
        raise DriverFailure(f"entry point {name!r} is not defined")
    return fn


def _short(x: Any, n: int = 120) -> str:
    try:
        text = repr(x)
    except BaseException:  # noqa: BLE001 - a hostile __repr__ must not break the report
        text = f"<{type(x).__name__}>"
    return text if len(text) <= n else text[:n] + "..."


def evalplus_truth(g: dict[str, Any], p: dict[str, Any]) -> dict[str, Any]:
    """Ground truth: the canonical solution's outputs and run times on every input."""
    fn = _entry(g, p["entry_point"])
    outputs, times = [], []
    for inp in codec.decode(p["inputs"]):
        inp = copy.deepcopy(inp)
        start = time.perf_counter()
        out = fn(*inp)
        times.append(time.perf_counter() - start)
        outputs.append(codec.encode(out is not None if p.get("output_not_none") else out))
    # One JSON text: outputs can reach 150 MB (HumanEval/15), and a string crosses pipes and
    # caches without being parsed into millions of objects on the way.
    return {"outputs": json.dumps(outputs, separators=(",", ":")), "times": times}


def evalplus_check(g: dict[str, Any], p: dict[str, Any]) -> dict[str, Any]:
    """EvalPlus's differential test: every input, its time limit, its oracle; stop at the first failure."""
    fn = _entry(g, p["entry_point"])
    inputs, expected = codec.decode(p["inputs"]), codec.loads(p["expected"])
    if not len(inputs) == len(expected) == len(p["time_limits"]):
        # a broken ground truth, not the program's fault: zip() would silently test fewer inputs
        raise RuntimeError(
            f"ground truth mismatch: {len(inputs)} inputs, {len(expected)} expected outputs, "
            f"{len(p['time_limits'])} time limits"
        )
    atol, details = p["atol"], []
    for i, (inp, exp) in enumerate(zip(inputs, expected)):
        try:
            with time_limit(p["time_limits"][i]):
                out = fn(*inp)
            ok, atol = evalplus_match(p["dataset"], p["entry_point"], inp, out, exp, atol)
            why = "" if ok else f"expected {_short(exp)}, got {_short(out)}"
        except BaseException as exc:  # noqa: BLE001 - upstream counts any exception as a failure
            ok, why = False, f"{type(exc).__name__}: {_short(str(exc), 80)}"
        details.append(ok)
        if not ok:
            raise DriverFailure(f"{p.get('split', '')} input #{i}: {why}".strip(), {"details": details})
    return {"details": details}


def unittest_suite(g: dict[str, Any], p: dict[str, Any]) -> dict[str, Any]:
    """BigCodeBench: run `TestCases`; pass iff no failure and no error."""
    import unittest  # noqa: PLC0415 - only BigCodeBench tasks need it, inside the sandbox

    cases = g.get(p.get("class_name", "TestCases"))
    if not isinstance(cases, type):
        raise DriverFailure("test class TestCases is not defined")
    result = unittest.TestResult()
    unittest.TestLoader().loadTestsFromTestCase(cases).run(result)
    issues = result.failures + result.errors
    if issues:
        test, trace = issues[0]
        last = trace.strip().splitlines()[-1] if trace.strip() else ""
        raise DriverFailure(
            f"{len(issues)}/{result.testsRun} tests failed; first: "
            f"{getattr(test, '_testMethodName', test)}: {_short(last, 160)}"
        )
    return {"tests_run": result.testsRun}


def _normalize_lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().splitlines()]


def lcb_stdio(g: dict[str, Any], p: dict[str, Any]) -> dict[str, Any]:
    """LiveCodeBench stdin/stdout tests: rerun the compiled program per test, compare stripped lines."""
    code = compile(p["program"], "<solution>", "exec", dont_inherit=True)  # not this module's __future__ flags
    for i, case in enumerate(p["tests"]):
        # Text wrappers over bytes, so that sys.stdin.buffer / sys.stdout.buffer work too.
        out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
        sys.stdin, sys.stdout = io.TextIOWrapper(io.BytesIO(case["input"].encode()), encoding="utf-8"), out
        try:
            with time_limit(p["time_limit"]):
                exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
        except SystemExit:
            pass  # `exit()` after printing the answer is fine for a script
        finally:
            sys.stdin, sys.stdout = sys.__stdin__, sys.__stdout__
        out.flush()
        got = out.buffer.getvalue().decode("utf-8", "replace")
        if _normalize_lines(got) != _normalize_lines(case["output"]):
            raise DriverFailure(f"test #{i}: expected {_short(case['output'], 60)}, got {_short(got, 60)}")
    return {"tests_run": len(p["tests"])}


def lcb_functional(g: dict[str, Any], p: dict[str, Any]) -> dict[str, Any]:
    """LiveCodeBench LeetCode-style tests: `Solution().<fn>(*args)` against the JSON output."""
    klass = g.get("Solution")
    if not isinstance(klass, type):
        raise DriverFailure("class Solution is not defined")
    for i, case in enumerate(p["tests"]):
        args = [json.loads(line) for line in case["input"].split("\n") if line.strip()]
        with time_limit(p["time_limit"]):
            out = getattr(klass(), p["fn_name"])(*args)
        exp = json.loads(case["output"])
        if is_forged(out) or out != exp:
            raise DriverFailure(f"test #{i}: expected {_short(exp, 60)}, got {_short(out, 60)}")
    return {"tests_run": len(p["tests"])}


DRIVERS: dict[str, Callable[[dict[str, Any], dict[str, Any]], Any]] = {
    "evalplus_truth": evalplus_truth,
    "evalplus_check": evalplus_check,
    "unittest": unittest_suite,
    "lcb_stdio": lcb_stdio,
    "lcb_functional": lcb_functional,
}
