"""What a run shows about the paper's claims: each testable claim, the measured effect, its interval, a verdict.

A claim is "supported" when the 95% interval of its paired effect lies above zero, "contradicted" when
below, and "not resolved at this size" otherwise: the verdict is read off the interval, never off the
point estimate. Where an exact test is at hand (McNemar's, or the sign-flip test over snippets or
problems: `core.stats`) it must agree (p < 0.05, Holm-adjusted over the claim's rows: `holm`): with
a handful of discordant pairs the percentile bootstrap can clear zero while the exact test does not
(an interval of [-20.0, -1.2] points with p = 0.077 was seen at tiny's size), and such an effect is
not resolved.
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
    """From the interval, unless a test says otherwise: p None is "no test for this row"; a NaN p is a
    test that could not be computed, which resolves nothing."""
    if ci_low is None or ci_high is None or pd.isna(ci_low) or pd.isna(ci_high):
        return "not measured"
    if p_value is not None and (pd.isna(p_value) or p_value >= ALPHA):
        return NOT_RESOLVED
    if ci_low > 0:
        return "supported"
    if ci_high < 0:
        return "contradicted"
    return NOT_RESOLVED


def p_text(p: float) -> str:
    """Four decimals, and "< 0.0001" below them: an exact p of 3e-11 is not "0.0000"."""
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def _row(claim: str, evidence: str, d: dict[str, Any], scale: float = 100.0) -> dict[str, Any]:
    lo, hi = d.get("ci_low"), d.get("ci_high")
    return {
        "claim": claim,
        "evidence": evidence,
        "n": d.get("n"),
        "effect (points)": None if d.get("delta") is None else round(scale * d["delta"], 1),
        "95% interval": None if lo is None else f"[{scale * lo:.1f}, {scale * hi:.1f}]",
        "p": d.get("p_value"),
        "_interval": (lo, hi),  # unrounded: `claims` reads the verdict off it and the Holm-adjusted p
    }


def yardstick_n(samples: float | None, per_snippet: int) -> str | None:
    """The yardstick's size as the test sees it: snippets are the paired units, samples nest in them."""
    if samples is None:
        return None
    return f"{samples / per_snippet:.0f} snippets x {per_snippet}"


def _metric_delta(m: dict[str, Any], prefix: str, per_snippet: int) -> dict[str, Any]:
    # 02 names the yardstick's size heldout_yardstick, 04 heldout_n: the same snippets x samples
    n = yardstick_n(m.get("heldout_yardstick", m.get("heldout_n")), per_snippet)
    return {k: m.get(f"{prefix}_{k}") for k in ("delta", "ci_low", "ci_high", "p_value")} | {"n": n}


def _synthesizer_claims(run: Run) -> list[dict[str, Any]]:
    m2 = run.metrics("02_seed")
    per = run.cfg.seed_stage.compare_sampling.n
    rows = [
        _row(
            "A few superior samples make a small model a better synthesizer",
            f"held-out yardstick, enhanced minus base, {what} rate",
            _metric_delta(m2, f"enhanced_vs_base_{what}", per),
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
            d["n"] = yardstick_n(d.get("n"), per)
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
                    _metric_delta(m4, f"vs_control_{what}", per),
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


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment (family-wise error at ALPHA) over one claim's tests; None stays None.

    Why: a claim tested on several benchmarks or rates counts as supported if any of them is, so
    its tests are one family; Holm controls that without assuming they are independent (HumanEval
    and HumanEval+ share the answers).
    """
    order = sorted((p, i) for i, p in enumerate(p_values) if p is not None and not pd.isna(p))
    out: list[float | None] = list(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        out[i] = running
    return out


def claims(run: Run) -> pd.DataFrame:
    """Every claim this run can test, with its measured effect (percentage points) and verdict.

    The verdict reads the interval and the Holm-adjusted p over the claim's rows (`holm`); both p
    values are shown.
    """
    rows = _synthesizer_claims(run) + _student_claims(run)
    for claim in dict.fromkeys(r["claim"] for r in rows):
        mine = [r for r in rows if r["claim"] == claim]
        for r, adjusted in zip(mine, holm([r["p"] for r in mine])):
            r["verdict"] = verdict(*r["_interval"], adjusted)
            r["p"], r["p (Holm)"] = _shown(r["p"]), _shown(adjusted)
    cols = ["claim", "evidence", "n", "effect (points)", "95% interval", "p", "p (Holm)", "verdict"]
    return pd.DataFrame(rows, columns=cols)


def _shown(p: float | None) -> str | None:
    return None if p is None or pd.isna(p) else p_text(p)
