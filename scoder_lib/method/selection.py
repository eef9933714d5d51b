"""Which candidates go on: one per snippet, the top fraction, then the most influential (or an ablation's pick).

Every rule that decides what the next synthesizer trains on lives here, with a unit test. The
ablations keep the same counts as the full method: each removes one component, never the data amount.
"""

from __future__ import annotations

import random

import numpy as np
import pandas as pd

from scoder_lib.core.records import Candidate


def _top(ranked: list[Candidate], fraction: float) -> list[Candidate]:
    return ranked[: max(1, round(fraction * len(ranked)))] if ranked else []


def _score(c: Candidate) -> float:
    """A candidate's score, -inf when unrated (`is None`, not falsy: a score of 0.0 is a real score)."""
    return c.score if c.score is not None else float("-inf")


def best_per_snippet(cands: list[Candidate], keep_top_fraction: float) -> list[Candidate]:
    """Best-scoring eligible candidate per snippet, then the top fraction of those by score."""
    best: dict[str, Candidate] = {}
    for c in cands:  # a strictly higher score replaces; ties keep the earlier candidate
        if c.eligible and (c.snippet_key not in best or _score(c) > _score(best[c.snippet_key])):
            best[c.snippet_key] = c
    return _top(sorted(best.values(), key=lambda c: -(c.score or 0.0)), keep_top_fraction)


def random_per_snippet(
    cands: list[Candidate], keep_top_fraction: float, seed: int, iteration: int = 0
) -> list[Candidate]:
    """The no-scoring ablation: a seeded random eligible candidate per snippet, then a random subset of
    the same fraction (the count `best_per_snippet` would keep).

    The seed includes the iteration (0: outside one), as the control's does: without it every
    iteration would pick the same positions (the same checkpoint and sample index per snippet).
    """
    rng = random.Random(f"{seed}:no-scoring:{iteration}")
    by_snippet: dict[str, list[Candidate]] = {}
    for c in cands:
        if c.eligible:
            by_snippet.setdefault(c.snippet_key, []).append(c)
    picked = [rng.choice(group) for _, group in sorted(by_snippet.items())]
    rng.shuffle(picked)
    return _top(picked, keep_top_fraction)


def select_per_snippet(
    cands: list[Candidate], keep_top_fraction: float, scoring: bool, seed: int, iteration: int = 0
) -> list[Candidate]:
    """Stage 03's selection: by score when scoring is on, else the random ablation (same count)."""
    if scoring:
        return best_per_snippet(cands, keep_top_fraction)
    return random_per_snippet(cands, keep_top_fraction, seed, iteration)


def keep_count(n: int, keep_fraction: float) -> int:
    """How many of n candidates stage 04 keeps: the fraction, at least one (the same in every ablation)."""
    return min(n, max(1, round(keep_fraction * n)))


def keep(
    cands: list[Candidate],
    influence: np.ndarray,
    keep_fraction: float,
    select: str,
    seed: int,
    iteration: int = 0,
) -> list[Candidate]:
    """Stage 04's keep rule: the `keep_count` candidates by influence, or (ablations) at random or by score.

    Every candidate carries its influence score (zeros when influence was not computed); ties keep
    the earlier candidate. The random draw's seed includes the iteration (0: outside one), as the
    control's does, so iterations do not repeat the same rank positions.
    """
    for c, value in zip(cands, influence):
        c.influence = float(value)
    n = keep_count(len(cands), keep_fraction)
    if select == "random":
        return random.Random(f"{seed}:no-influence:{iteration}").sample(cands, n)
    key = (lambda i: -float(influence[i])) if select == "influence" else (lambda i: -(cands[i].score or 0.0))
    return [cands[i] for i in sorted(range(len(cands)), key=key)[:n]]


def random_control(eligible: list[Candidate], n: int, seed: int, iteration: int) -> list[Candidate]:
    """The same-size control: a seeded random selection of `n` of `eligible`, one per snippet where possible.

    Stage 04 passes `lineage.control_pool(...).fit`: filtered by the same training-length rule as the
    method's pool, so both arms train on `n` examples.
    """
    rng = random.Random(f"{seed}:control:{iteration}")
    pool = list(eligible)
    rng.shuffle(pool)
    first: dict[str, Candidate] = {}
    for c in pool:
        first.setdefault(c.snippet_key, c)
    ordered = list(first.values()) + [c for c in pool if first[c.snippet_key] is not c]
    return ordered[:n]


def score_influence_agreement(
    cands: list[Candidate], influence: np.ndarray, kept: list[Candidate]
) -> tuple[float, float]:
    """Spearman rank correlation of score and influence, and the overlap of the two same-size top sets
    (undefined, NaN, for fewer than three candidates)."""
    if len(cands) <= 2:
        return float("nan"), float("nan")
    df = pd.DataFrame(
        {"cand_id": [c.cand_id for c in cands], "score": [c.score for c in cands], "influence": influence}
    )
    rho = float(df[["score", "influence"]].rank().corr().iloc[0, 1])
    top_score = set(df.nlargest(len(kept), "score").cand_id)
    overlap = len(top_score & {k.cand_id for k in kept}) / max(len(kept), 1)
    return rho, overlap
