"""EvalPlus's evaluation semantics for HumanEval+ and MBPP+, reimplemented on our sandbox.

Why not the `evalplus` package: 0.3.1 requires anthropic, google-generativeai, openai, rich,
tree-sitter and more at install time, and its checker forks from the caller's process without
a sandbox. We keep its rules (read from evalplus/evaluate.py, eval/__init__.py, data/mbpp.py of
v0.3.1; reimplemented, not copied): ground truth is the canonical solution's output on every base
and plus input, computed in the sandbox and cached on disk per release-file checksum; each input
gets max(1 s, 4 x the canonical's time) and the whole run min(60 s, sum) + 2 s under a 4 GiB
address-space limit; outputs match exactly, or within atol for floats, or by per-task special
oracles (`harness/compare.py`); the first failing input ends the run.

Deliberate differences:
- HumanEval/32 (find_zero): upstream's oracle branch skips marking the input as passed (its
  `continue` before `details[i] = True`, see evalplus PR #201), so every solution, canonical
  included, fails there. We apply the oracle as intended: |poly(xs, x)| <= atol passes.
- Canonical run times are measured inside our sandbox, under the same load as the checks.
- Outputs of program-made classes that override comparison dunders are refused (forged values).
- A split whose ground truth cannot be computed (Mbpp/255's plus inputs exhaust 4 GiB) fails that
  split for every solution; upstream computes it without a memory limit and then fails the check.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from scoder_lib.core.logs import get_logger
from scoder_lib.data.benchmarks import ALIASES, FILES, Task
from scoder_lib.sandbox.execution import ExecResult, Job, run_many
from scoder_lib.sandbox.harness import codec
from scoder_lib.sandbox.harness.compare import MBPP_OUTPUT_NOT_NONE

log = get_logger(__name__)

MIN_TIME_LIMIT_S = 1.0
GT_TIME_LIMIT_FACTOR = 4.0
TIMEOUT_PER_TASK_S = 60.0
DECODE_BYTES_PER_S = 20e6  # a slow, loaded core decoding expected outputs
MEMORY_MB = 4096  # EvalPlus's default address-space limit (EVALPLUS_MAX_MEMORY_BYTES)
TRUTH_TIMEOUT_S = 300.0  # the canonical solution on all plus inputs of one task
TRUTH_VERSION = "v3"  # bump when the ground-truth format or its computation changes
SPLITS = ("base", "plus")

# Which MBPP+ tasks store tuples/sets/complex numbers as JSON lists/strings (EvalPlus's
# mbpp_deserialize_inputs): task number -> how to rebuild one input.
_TUPLE_EACH = {
    2,
    116,
    132,
    143,
    222,
    261,
    273,
    394,
    399,
    421,
    424,
    429,
    470,
    560,
    579,
    596,
    616,
    630,
    726,
    740,
    744,
    809,
}
_TUPLE_NESTED = {63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780}
_TUPLE_FIRST_LIST = {75, 413, 444, 753}
_TUPLE_SECOND = {106, 750}
_TUPLE_FIRST = {250, 405, 446, 617, 720, 763, 808}
_TUPLE_NESTED_TWICE = {259, 401, 445}
_TUPLE_DEEP = {580, 615, 791}


def _deep_tuple(x: Any) -> Any:
    return tuple(_deep_tuple(i) for i in x) if isinstance(x, list) else x


def _mbpp_input(n: int, inp: list) -> Any:
    """One MBPP+ input with the Python types its task expects."""
    if n in _TUPLE_EACH:
        return [tuple(a) for a in inp]
    if n in _TUPLE_NESTED:
        return [[tuple(a) for a in arg] for arg in inp]
    if n in _TUPLE_FIRST_LIST:
        return [[tuple(a) for a in inp[0]], inp[1]]
    if n in _TUPLE_SECOND:
        return [inp[0], tuple(inp[1])]
    if n == 115:  # upstream turns empty lists into {} (a dict), kept for equal verdicts
        return [[set(a) if isinstance(a, list) and len(a) else {} for a in inp[0]]]
    if n == 124:
        return (float(inp[0]), complex(inp[1]))
    if n in _TUPLE_FIRST:
        return [tuple(inp[0]), inp[1]]
    if n in _TUPLE_NESTED_TWICE:
        return [tuple(tuple(a) for a in arg) for arg in inp]
    if n == 278:
        return [tuple(tuple(a) if isinstance(a, list) else a for a in inp[0])]
    if n == 307:
        return [tuple(inp[0]), inp[1], inp[2]]
    if n == 722:
        return [{k: tuple(v) for k, v in inp[0].items()}, *inp[1:]]
    if n == 252:
        return [complex(inp[0])]
    if n in _TUPLE_DEEP:
        return _deep_tuple(inp)
    return inp


def inputs(task: Task, split: str) -> list[Any]:
    """A task's base or plus inputs, as the function under test receives them."""
    raw = task.extra[f"{split}_input"]
    if task.benchmark in ("mbpp", "mbpp+"):
        n = int(task.task_id.split("/")[-1])
        return [_mbpp_input(n, inp) for inp in raw]
    return raw


def dataset_of(task: Task) -> str:
    return "mbpp" if task.benchmark in ("mbpp", "mbpp+") else "humaneval"


def canonical_program(task: Task) -> str:
    return task.prompt + task.canonical_solution


# ----------------------------------------------------------------------------- ground truth
def truth_path(benchmark: str, cache_dir: Path) -> Path:
    sha = FILES[ALIASES.get(benchmark, benchmark)].sha256
    return cache_dir / f"{ALIASES.get(benchmark, benchmark)}-truth-{TRUTH_VERSION}-{sha[:16]}.json.gz"


def _load(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def _save(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=1) as fh:  # 300 MB of JSON: speed over size
        json.dump(data, fh)
    tmp.replace(path)


def _truth_job(task: Task, split: str, memory_mb: int) -> Job:
    payload = {
        "entry_point": task.entry_point,
        "inputs": codec.encode(inputs(task, split)),
        "output_not_none": task.entry_point in MBPP_OUTPUT_NOT_NONE and dataset_of(task) == "mbpp",
    }
    return Job(
        program=canonical_program(task),
        driver="evalplus_truth",
        payload=payload,
        timeout_s=TRUTH_TIMEOUT_S,
        memory_mb=memory_mb,
        max_result_mb=1024,
    )


def ground_truth(tasks: list[Task], cache_dir: Path, **run: Any) -> dict[str, dict[str, Any]]:
    """Expected outputs and canonical run times per task; cached, and only missing tasks computed."""
    path = truth_path(tasks[0].benchmark, cache_dir)
    cached = _load(path)
    todo = [t for t in tasks if cached.get(t.task_id, {"retry": True}).get("retry")]
    if todo:
        log.info(
            "ground truth: running %d canonical solutions (%d cached in %s)", len(todo), len(tasks) - len(todo), path
        )
        jobs = [_truth_job(t, s, max(run.get("memory_mb", 1024), MEMORY_MB)) for t in todo for s in SPLITS]
        results = run_many(jobs, desc="ground truth", **run)
        for i, t in enumerate(todo):
            cached[t.task_id] = _truth_entry(results[2 * i], results[2 * i + 1])
            for split, why in truth_errors(cached[t.task_id]).items():
                log.warning("ground truth for %s (%s inputs) failed: %s", t.task_id, split, why)
        _save(path, cached)
    return {t.task_id: cached[t.task_id] for t in tasks}


def _truth_entry(base: ExecResult, plus: ExecResult) -> dict[str, Any]:
    """Per split: outputs and times, or the error (kept, so reruns skip it; timeouts are retried)."""
    entry: dict[str, Any] = {"retry": False}
    for split, res in zip(SPLITS, (base, plus)):
        if res.passed:
            entry.update({split: res.payload["outputs"], f"{split}_time": res.payload["times"]})
        else:
            entry[f"{split}_error"] = f"{res.status}: {res.reason}"
            entry["retry"] = entry["retry"] or res.status in ("timeout", "error")
    return entry


def truth_errors(truth: dict[str, Any]) -> dict[str, str]:
    """split -> why its ground truth is missing."""
    return {s: truth[f"{s}_error"] for s in SPLITS if f"{s}_error" in truth}


# ----------------------------------------------------------------------------- checking
def check_job(task: Task, solution: str, truth: dict[str, Any], split: str, memory_mb: int) -> Job:
    """The differential-testing job of one solution on one split (at least EvalPlus's 4 GiB)."""
    memory_mb = max(memory_mb, MEMORY_MB)
    limits = [max(MIN_TIME_LIMIT_S, GT_TIME_LIMIT_FACTOR * t) for t in truth[f"{split}_time"]]
    payload = {
        "dataset": dataset_of(task),
        "entry_point": task.entry_point,
        "split": split,
        "inputs": codec.encode(inputs(task, split)),
        "expected": truth[split],
        "atol": float(task.extra.get("atol") or 0),
        "time_limits": limits,
    }
    # Upstream hands outputs over by fork; we decode them in the child (HumanEval/15: 150 MB of
    # JSON), so the run gets time for that on top of upstream's budget.
    decode_s = len(truth[split]) / DECODE_BYTES_PER_S
    return Job(
        program=solution,
        driver="evalplus_check",
        payload=payload,
        memory_mb=memory_mb,
        timeout_s=min(TIMEOUT_PER_TASK_S, sum(limits)) + 2.0 + decode_s,
    )


def status(result: ExecResult) -> str:
    """EvalPlus's status words: pass | fail | timeout."""
    return {"passed": "pass", "timeout": "timeout"}.get(result.status, "fail")
