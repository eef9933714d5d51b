"""Which candidates go on: one per snippet, the top fraction, then the most influential (or an ablation's pick).

Every rule that decides what the next synthesizer trains on lives here, with a unit test. The
ablations keep the same counts as the full method: each removes one component, never the data amount.
So the counts are fractions of what every run of a profile shares (the K snippets sampled, then what 03
selected), not of what a run's synthesizer happened to make eligible, which differs between runs.
"""

from __future__ import annotations

import random

import numpy as np
import pandas as pd

from scoder_lib.core.logs import get_logger
from scoder_lib.core.records import Candidate

log = get_logger(__name__)


def select_count(cands: list[Candidate], keep_top_fraction: float) -> int:
    """How many candidates stage 03 selects: the fraction of the snippets sampled (eligible or not), at
    least one. Why of the sampled: the eligible share depends on the run's synthesizer, so a fraction of
    it would hand an ablation run (or a later iteration) a different amount of training data."""
    snippets = len({c.snippet_key for c in cands})
    return max(1, round(keep_top_fraction * snippets)) if snippets else 0


def _score(c: Candidate) -> float:
    """A candidate's score, -inf when unrated (`is None`, not falsy: a score of 0.0 is a real score)."""
    return c.score if c.score is not None else float("-inf")


def best_per_snippet(cands: list[Candidate], keep_top_fraction: float) -> list[Candidate]:
    """Best-scoring eligible candidate per snippet, then the `select_count` best of those by score."""
    best: dict[str, Candidate] = {}
    for c in cands:  # a strictly higher score replaces; ties keep the earlier candidate
        if c.eligible and (c.snippet_key not in best or _score(c) > _score(best[c.snippet_key])):
            best[c.snippet_key] = c
    # fewer than select_count (all there are) when too few snippets had an eligible candidate
    return sorted(best.values(), key=lambda c: -_score(c))[: select_count(cands, keep_top_fraction)]


def random_per_snippet(
    cands: list[Candidate], keep_top_fraction: float, seed: int, iteration: int = 0
) -> list[Candidate]:
    """The no-scoring ablation: a seeded random eligible candidate per snippet, then a random subset of
    `select_count` (the count `best_per_snippet` keeps).

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
    return picked[: select_count(cands, keep_top_fraction)]


def select_per_snippet(
    cands: list[Candidate], keep_top_fraction: float, scoring: bool, seed: int, iteration: int = 0
) -> list[Candidate]:
    """Stage 03's selection: by score when scoring is on, else the random ablation (same count)."""
    if scoring:
        picked = best_per_snippet(cands, keep_top_fraction)
    else:
        picked = random_per_snippet(cands, keep_top_fraction, seed, iteration)
    if len(picked) < (target := select_count(cands, keep_top_fraction)):
        log.warning(
            "%d selected, not %d: only %d snippets had an eligible candidate; runs compared with this one "
            "train on different amounts",
            len(picked),
            target,
            len(picked),
        )
    return picked


def keep_count(selected: int, available: int, keep_fraction: float) -> int:
    """How many candidates stage 04 keeps: the fraction of the `selected` 03 handed on, at least one, at
    most the `available` (those not too long for training). Why of the selected: the number too long
    differs between runs, and the method, its ablations and its control must train on the same count."""
    return min(available, max(1, round(keep_fraction * selected))) if selected else 0


def keep(
    cands: list[Candidate],
    influence: np.ndarray,
    keep_fraction: float,
    select: str,
    seed: int,
    iteration: int = 0,
    selected: int | None = None,
) -> list[Candidate]:
    """Stage 04's keep rule: the `keep_count` candidates by influence, or (ablations) at random or by score.

    `selected`: how many 03 selected, before those too long for training were left out (default: all of
    `cands` were).

    Every candidate carries its influence score (zeros when influence was not computed); ties keep
    the earlier candidate. The random draw's seed includes the iteration (0: outside one), as the
    control's does, so iterations do not repeat the same rank positions.
    """
    for c, value in zip(cands, influence):
        c.influence = float(value)
    n = keep_count(len(cands) if selected is None else selected, len(cands), keep_fraction)
    if select == "random":
        return random.Random(f"{seed}:no-influence:{iteration}").sample(cands, n)
    key = (lambda i: -float(influence[i])) if select == "influence" else (lambda i: -_score(cands[i]))
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
