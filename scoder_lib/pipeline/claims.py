"""What a run shows about the paper's claims: each testable claim, the measured effect, its interval, a verdict.

A claim is "supported" when the 95% interval of its paired effect lies above zero, "contradicted" when
below, and "not resolved at this size" otherwise: the verdict is read off the interval, never off the
point estimate. Where an exact test is at hand (McNemar's, or the sign-flip test over snippets or
problems: `core.stats`) it must agree (p < 0.05): with a handful of
discordant pairs the percentile bootstrap can clear zero while the exact test does not (tiny's
iteration 1 against its control: interval [-20.0, -1.2] points, p = 0.077), and such an effect is not
resolved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from scoder_lib.core.run import Run
from scoder_lib.evaluation.compare import HELDOUT_TESTS
from scoder_lib.method import yardstick

NOT_RESOLVED = "not resolved at this size"


ALPHA = 0.05


def verdict(ci_low: float | None, ci_high: float | None, p_value: float | None = None) -> str:
    if ci_low is None or ci_high is None or pd.isna(ci_low) or pd.isna(ci_high):
        return "not measured"
    if p_value is not None and not pd.isna(p_value) and p_value >= ALPHA:
        return NOT_RESOLVED
    if ci_low > 0:
        return "supported"
    if ci_high < 0:
        return "contradicted"
    return NOT_RESOLVED


def _row(claim: str, evidence: str, d: dict[str, Any], scale: float = 100.0) -> dict[str, Any]:
    lo, hi = d.get("ci_low"), d.get("ci_high")
    return {
        "claim": claim,
        "evidence": evidence,
        "n": d.get("n"),
        "effect (points)": None if d.get("delta") is None else round(scale * d["delta"], 1),
        "95% interval": None if lo is None else f"[{scale * lo:.1f}, {scale * hi:.1f}]",
        "p": None if d.get("p_value") is None else round(d["p_value"], 4),
        "verdict": verdict(lo, hi, d.get("p_value")),
    }


def _metric_delta(m: dict[str, Any], prefix: str) -> dict[str, Any]:
    # 02 names the yardstick's size heldout_yardstick, 04 heldout_n: the same 40 snippets x samples
    n = m.get("heldout_yardstick", m.get("heldout_n"))
    return {k: m.get(f"{prefix}_{k}") for k in ("delta", "ci_low", "ci_high", "p_value")} | {"n": n}


def _synthesizer_claims(run: Run) -> list[dict[str, Any]]:
    m2 = run.metrics("02_seed")
    rows = [
        _row(
            "A few superior samples make a small model a better synthesizer",
            f"held-out yardstick, enhanced minus base, {what} rate",
            _metric_delta(m2, f"enhanced_vs_base_{what}"),
        )
        for what in ("valid", "parsed")
    ]
    last = run.cfg.iterate.iterations
    first, final = (
        Path(run.stage_dir("02_seed")) / "heldout_enhanced.jsonl",
        run.stage_dir("04_influence", last) / "heldout.jsonl",
    )
    if last and first.exists() and final.exists():
        for what in ("valid", "parsed"):
            d = yardstick.compare(yardstick.load(first), yardstick.load(final), what, seed=run.cfg.seed)
            rows.append(
                _row(
                    "Iterative self-distillation improves the synthesizer",
                    f"held-out yardstick, synthesizer {last} minus enhanced, {what} rate",
                    d,
                )
            )
    for t in run.cfg.influence.control:
        m4 = run.metrics("04_influence", t)
        for what in ("valid", "parsed"):
            rows.append(
                _row(
                    "Scoring and influence pick better training data than chance",
                    f"iteration {t}: synthesizer minus a same-size random control, {what} rate",
                    _metric_delta(m4, f"vs_control_{what}"),
                )
            )
    return rows


def _student_claims(run: Run) -> list[dict[str, Any]]:
    path = run.stage_dir("06_evaluate") / "paired.csv"
    if not path.exists():
        return []
    rows = []
    method = next((a.name for a in run.cfg.final.arms if a.data == "method"), None)
    for r in pd.read_csv(path).to_dict("records"):
        if r["b"] != method:
            continue
        claim = (
            "Students trained on SCoder data beat the base model"
            if r["a"] == "base"
            else f"SCoder data beats the `{r['a']}` arm's data"
        )
        d = {
            "n": r["n"],
            "delta": r["delta"] / 100,
            "ci_low": r["ci_low"] / 100,
            "ci_high": r["ci_high"] / 100,
            "p_value": r["p_value"],
        }
        what = "share of the teacher's asserts passed" if r["benchmark"] == HELDOUT_TESTS else "pass@1"
        rows.append(_row(claim, f"{r['benchmark']}: {what} of {r['b']} minus {r['a']}", d))
    return rows


def claims(run: Run) -> pd.DataFrame:
    """Every claim this run can test, with its measured effect (percentage points) and verdict."""
    return pd.DataFrame(_synthesizer_claims(run) + _student_claims(run))
