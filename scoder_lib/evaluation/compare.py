"""Paired comparisons between models evaluated on the same tasks: the delta, its interval, an exact p."""

from __future__ import annotations

from collections import Counter

import pandas as pd

from scoder_lib.core.records import EvalResult
from scoder_lib.core.stats import paired_delta

Results = dict[str, dict[str, list[EvalResult]]]  # model -> benchmark -> rows (one greedy answer per task)
# The held-out answers scored by the share of the teacher's asserts each passes (APPS's test-case
# average): where every model scores 0 on whole problems, this still tells them apart.
HELDOUT_TESTS = "heldout-tests"
# MBPP+'s answers judged on its base inputs only, against the canonical outputs with EvalPlus's float
# tolerance: EvalPlus's MBPP column, the one published MBPP figures (and the anchors) report. The
# "mbpp" benchmark instead runs the original asserts, which compare floats with == on 8 tasks.
MBPP_BASE = "mbpp-base"


def comparisons(models: list[str], arms: dict[str, str]) -> list[tuple[str, str]]:
    """Which pairs to test: every model against the base model, and the method's arm against every other arm.

    `arms` maps arm name -> data kind (the `final.arms` entries that were trained).
    """
    pairs = [("base", m) for m in models if m != "base" and "base" in models]
    method = next((a for a, kind in arms.items() if kind == "method"), None)
    if method is not None:
        pairs += [(other, method) for other in arms if other != method and other in models]
    return pairs


def one_answer_per_task(rows: list[EvalResult], benchmark: str = "") -> None:
    """Raise ValueError if any task has more than one row. Why: per-task scores and the paired tests take
    one greedy answer per task; keeping one of several (or summing them) would silently bias them."""
    counts = Counter(r.task_id for r in rows)
    extra = next((t for t, n in counts.items() if n > 1), None)
    if extra is not None:
        raise ValueError(
            f"{benchmark or 'benchmark'}: {counts[extra]} answers for task {extra!r}; the greedy headline and "
            "paired comparisons need exactly one answer per task (greedy decoding, n=1 sample per task); "
            "score several samples per task with evaluate.summarize's pass@k instead"
        )


def passed_by_task(rows: list[EvalResult], task_ids: list[str], benchmark: str = "") -> list[bool]:
    """One verdict per task in `task_ids` order (greedy: one answer each); a task without one failed."""
    one_answer_per_task(rows, benchmark)
    got = {r.task_id: r.passed for r in rows}
    return [bool(got.get(t, False)) for t in task_ids]


def metric_label(benchmark: str) -> str:
    """What a benchmark's `pass@1` column holds, for axes and headers."""
    return "share of the teacher's asserts passed (%)" if benchmark == HELDOUT_TESTS else "pass@1 (%)"


def tests_share_by_task(rows: list[EvalResult], task_ids: list[str], benchmark: str = HELDOUT_TESTS) -> list[float]:
    """The share of its tests each task's answer passed, in `task_ids` order (no answer: 0)."""
    one_answer_per_task(rows, benchmark)
    got = {r.task_id: r.tests_passed / r.tests_total for r in rows if r.tests_total}
    return [got.get(t, 0.0) for t in task_ids]


def paired_table(
    results: Results, pairs: list[tuple[str, str]], task_ids: dict[str, list[str]], seed: int
) -> pd.DataFrame:
    """One row per (pair, benchmark): pass@1 of both, the delta in points, its 95% paired bootstrap
    interval and McNemar's exact p; for `HELDOUT_TESTS`, the share of tests passed and the sign-flip p."""
    rows = []
    for a, b in pairs:
        for bench, ids in task_ids.items():
            if bench not in results.get(a, {}) or bench not in results.get(b, {}):
                continue
            score = tests_share_by_task if bench == HELDOUT_TESTS else passed_by_task
            d = paired_delta(score(results[a][bench], ids, bench), score(results[b][bench], ids, bench), seed=seed)
            rows.append(
                {
                    "comparison": f"{b} - {a}",
                    "a": a,
                    "b": b,
                    "benchmark": bench,
                    "n": d["n"],
                    "pass1_a": 100 * d["rate_a"],
                    "pass1_b": 100 * d["rate_b"],
                    "delta": 100 * d["delta"],
                    "ci_low": 100 * d["ci_low"],
                    "ci_high": 100 * d["ci_high"],
                    "p_value": d["p_value"],
                    "only_a": d["only_a"],
                    "only_b": d["only_b"],
                }
            )
    return pd.DataFrame(rows)
