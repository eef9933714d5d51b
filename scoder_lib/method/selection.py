"""Which candidates go on: the best per snippet by score, the top fraction, then the most influential.

Every rule that decides what the next synthesizer trains on lives here, with a unit test.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from scoder_lib.core.records import Candidate


def best_per_snippet(cands: list[Candidate], keep_top_fraction: float) -> list[Candidate]:
    """Best-scoring eligible candidate per snippet, then the top fraction of those by score."""
    best: dict[str, Candidate] = {}
    for c in cands:
        score = c.score if c.score is not None else float("-inf")
        if c.eligible and (c.snippet_key not in best or score > (best[c.snippet_key].score or float("-inf"))):
            best[c.snippet_key] = c
    ranked = sorted(best.values(), key=lambda c: -(c.score or 0.0))
    return ranked[: max(1, round(keep_top_fraction * len(ranked)))] if ranked else []


def keep_count(n: int, keep_fraction: float, enabled: bool) -> int:
    """How many candidates influence keeps: the fraction, at least one; all of them when it is off."""
    if not enabled:
        return n
    return min(n, max(1, round(keep_fraction * n)))


def keep_by_influence(
    cands: list[Candidate], scores: np.ndarray, keep_fraction: float, enabled: bool
) -> list[Candidate]:
    """The most influential candidates (stable order on ties), each carrying its influence score."""
    order = np.argsort(-scores, kind="stable")
    kept = []
    for i in order[: keep_count(len(cands), keep_fraction, enabled)]:
        cands[i].influence = float(scores[i])
        kept.append(cands[i])
    return kept


def score_influence_agreement(cands: list[Candidate], scores: np.ndarray, kept: list[Candidate]) -> tuple[float, float]:
    """Spearman rank correlation of score and influence, and the overlap of the two same-size top sets
    (undefined, NaN, for fewer than three candidates)."""
    if len(cands) <= 2:
        return float("nan"), float("nan")
    df = pd.DataFrame({"cand_id": [c.cand_id for c in cands], "score": [c.score for c in cands], "influence": scores})
    rho = float(df[["score", "influence"]].rank().corr().iloc[0, 1])
    top_score = set(df.nlargest(len(kept), "score").cand_id)
    overlap = len(top_score & {k.cand_id for k in kept}) / max(len(kept), 1)
    return rho, overlap
