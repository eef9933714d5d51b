"""Multi-aspect scoring: Z aspect ratings (digits 0-9) per candidate, and the weighted score on candidates.

How the weights are fitted is `method.weights`.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np

from scoder_lib.core.records import Candidate, SeedSample
from scoder_lib.method import synthesis
from scoder_lib.method.rating import Rater, RatingPrompt, expected

MAX_SAMPLE_CHARS = 3000  # long outputs are cut: the rubric is about the exercise, not its tail


def rubric(version: str = "v1") -> tuple[str, dict[str, str]]:
    """(system prompt, {aspect: question}) from scoder_lib/prompts/scoring_<version>.md.

    Why two scored examples in the system prompt: without them SmolLM2-135M rated a broken
    exercise above a correct one; with them its expected digit separates the two (slow test).
    """
    text = (resources.files("scoder_lib") / "prompts" / f"scoring_{version}.md").read_text(encoding="utf-8")
    system = text.split("<!-- system -->")[1].split("<!--")[0].strip()
    aspects = {}
    for block in text.split("<!-- aspect: ")[1:]:
        name, _, body = block.partition(" -->")
        aspects[name.strip()] = body.strip()
    return system, aspects


def rating_prompt(snippet: str, sample_text: str, aspects: list[str], version: str = "v1") -> RatingPrompt:
    system, questions = rubric(version)
    unknown = [a for a in aspects if a not in questions]
    if unknown:
        raise ValueError(f"unknown aspect(s) {unknown}; the rubric has: {', '.join(questions)}")
    # The exercise comes right before the question, as in the rubric's calibration examples.
    text = f"Source snippet:\n```python\n{snippet.strip()}\n```\n\nExercise:\n{sample_text.strip()[:MAX_SAMPLE_CHARS]}"
    return RatingPrompt(system, text, tuple(questions[a] for a in aspects))


@dataclass
class Ratings:
    """Per candidate: expected digit and argmax digit for each aspect (n x Z)."""

    expected: np.ndarray
    argmax: np.ndarray
    aspects: list[str]

    def score(self, weights: np.ndarray) -> np.ndarray:
        return self.expected @ weights


def rate(rater: Rater, snippets: list[str], texts: list[str], aspects: list[str], desc: str = "scoring") -> Ratings:
    probs = rater.rate([rating_prompt(s, t, aspects) for s, t in zip(snippets, texts)], desc=desc)
    exp = np.array([expected(p) for p in probs]).reshape(len(texts), len(aspects))
    arg = np.array([p.argmax(-1) for p in probs]).reshape(len(texts), len(aspects))
    return Ratings(exp, arg, aspects)


def rate_teacher(rater: Rater, rows: list[SeedSample], aspects: list[str]) -> np.ndarray:
    """Aspect ratings of teacher samples, rendered as the synthesizer learns them: the weight fit's positives.

    The negatives are the iteration's eligible candidates (`method.weights`), already rated.
    """
    texts = [synthesis.render(r.problem, r.solution, r.tests) for r in rows]
    return rate(rater, [r.snippet for r in rows], texts, aspects, "rating teacher").expected


def apply_scores(cands: list[Candidate], ratings: Ratings | None, weights: np.ndarray, aspects: list[str]) -> None:
    """Write score and per-aspect ratings onto the candidates, in place.

    `ratings` holds one row per eligible candidate, in order; ineligible candidates stay unrated
    (None). Without ratings (no scoring) every eligible candidate scores 0: selection sees ties only.
    """
    eligible = [c for c in cands if c.eligible]
    scores = ratings.score(weights) if ratings is not None else np.zeros(len(eligible))
    for c in cands:
        c.ratings, c.digits = dict.fromkeys(aspects), dict.fromkeys(aspects)
    for i, c in enumerate(eligible):
        c.score = float(scores[i])
        if ratings is not None:
            c.ratings = {a: float(ratings.expected[i, z]) for z, a in enumerate(aspects)}
            c.digits = {a: int(ratings.argmax[i, z]) for z, a in enumerate(aspects)}
