"""Paired comparisons between models evaluated on the same tasks: the delta, its interval, McNemar's p."""

from __future__ import annotations

import pandas as pd

from scoder_lib.core.records import EvalResult
from scoder_lib.core.stats import paired_delta

Results = dict[str, dict[str, list[EvalResult]]]  # model -> benchmark -> rows (one greedy answer per task)


def comparisons(models: list[str], arms: dict[str, str]) -> list[tuple[str, str]]:
    """Which pairs to test: every model against the base model, and the method's arm against every other arm.

    `arms` maps arm name -> data kind (the `final.arms` entries that were trained).
    """
    pairs = [("base", m) for m in models if m != "base" and "base" in models]
    method = next((a for a, kind in arms.items() if kind == "method"), None)
    if method is not None:
        pairs += [(other, method) for other in arms if other != method and other in models]
    return pairs


def passed_by_task(rows: list[EvalResult], task_ids: list[str]) -> list[bool]:
    """One verdict per task in `task_ids` order (greedy: one answer each); a task without one failed."""
    got = {r.task_id: r.passed for r in rows}
    return [bool(got.get(t, False)) for t in task_ids]


def paired_table(
    results: Results, pairs: list[tuple[str, str]], task_ids: dict[str, list[str]], seed: int
) -> pd.DataFrame:
    """One row per (pair, benchmark): pass@1 of both, the delta in points, its 95% paired bootstrap
    interval and McNemar's exact p."""
    rows = []
    for a, b in pairs:
        for bench, ids in task_ids.items():
            if bench not in results.get(a, {}) or bench not in results.get(b, {}):
                continue
            d = paired_delta(passed_by_task(results[a][bench], ids), passed_by_task(results[b][bench], ids), seed=seed)
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
