"""Multi-aspect scoring: Z aspect ratings (digits 0-9) per candidate, and the weights that combine them.

Weights are fitted, not hand-set (the paper's rule is not public; this is the project's choice): a
logistic model p(teacher | x) = sigmoid(b + sum_z beta_z x_z) with beta >= 0 separates the teacher's
samples from the base synthesizer's on the same snippets; w = beta / sum(beta). Non-negativity keeps
every aspect a "more is better" criterion; normalisation keeps scores on the 0-9 scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from scoder_lib.core.config import AspectWeights, Config
from scoder_lib.core.records import Candidate, SeedSample
from scoder_lib.llm.generator import generator
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


def teacher_vs_base(
    rater: Rater, cfg: Config, rows: list[SeedSample], cache_dir: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Aspect ratings of the teacher's samples and of the base synthesizer's outputs on the same snippets.

    What the weight fit separates: no human labels, only "superior" (teacher) vs "not yet" (base).
    """
    snippets = [r.snippet for r in rows]
    base = synthesis.synthesize(
        generator(cfg.synthesizer, cache_dir),
        snippets,
        cfg.seed_stage.compare_sampling,
        version=cfg.seed_stage.prompt_version,
        execution=cfg.execution,
        cache_dir=cache_dir,
        desc="base synthesizer (weight fit)",
    )
    aspects = cfg.iterate.aspects
    teacher = rate(
        rater, snippets, [synthesis.render(r.problem, r.solution, r.tests) for r in rows], aspects, "rating teacher"
    )
    base_r = rate(rater, snippets, [b[0].raw for b in base], aspects, "rating base")
    return teacher.expected, base_r.expected


# ----------------------------------------------------------------------------- weights
def fit_weights(x: np.ndarray, y: np.ndarray, l2: float = 1.0, steps: int = 3000, lr: float = 0.05) -> np.ndarray:
    """Non-negative logistic regression (projected gradient descent); returns normalised weights.

    x: (n, Z) aspect ratings on the 0-9 scale; y: 1 for superior (teacher) samples, 0 otherwise.
    """
    n, z = x.shape
    mu, sd = x.mean(0), x.std(0) + 1e-6  # standardise for conditioning, then map back
    xs = (x - mu) / sd
    beta, b = np.full(z, 0.1), 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(xs @ beta + b)))
        g_beta = xs.T @ (p - y) / n + l2 * beta / n
        beta = np.maximum(beta - lr * g_beta, 0.0)  # projection onto beta >= 0
        b -= lr * float(np.mean(p - y))
    raw = beta / sd  # coefficients on the original 0-9 scale
    return raw / raw.sum() if raw.sum() > 0 else np.full(z, 1.0 / z)


def bootstrap_weights(
    x: np.ndarray, y: np.ndarray, n_boot: int, l2: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point estimate and 95% percentile intervals (low, high) of the weights."""
    rng = np.random.default_rng(seed)
    w = fit_weights(x, y, l2)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if len(set(y[idx])) == 2:
            boots.append(fit_weights(x[idx], y[idx], l2, steps=800))
    b = np.array(boots) if boots else w[None]
    return w, np.percentile(b, 2.5, axis=0), np.percentile(b, 97.5, axis=0)


def separation_auc(scores: np.ndarray, y: np.ndarray) -> float:
    """Probability that a random teacher sample outscores a random base sample (ties count half)."""
    pos, neg = scores[y == 1], scores[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def fixed_weights(aspects: list[str], fixed: dict[str, float]) -> np.ndarray:
    missing = [a for a in aspects if a not in fixed]
    if missing:
        raise ValueError(f"iterate.weights.fixed lacks aspect(s) {missing}")
    w = np.array([fixed[a] for a in aspects], dtype=float)
    return w / w.sum()


@dataclass(frozen=True)
class WeightFit:
    """Aspect weights (summing to 1) with 95% intervals, and how well they separate teacher from base."""

    aspects: list[str]
    weights: np.ndarray
    low: np.ndarray
    high: np.ndarray
    mode: str
    auc: float  # teacher-vs-base separation by the weighted score
    auc_equal: float  # the same with equal weights

    def to_json(self) -> dict[str, Any]:
        return {
            "aspects": self.aspects,
            "weights": self.weights.tolist(),
            "low": self.low.tolist(),
            "high": self.high.tolist(),
            "mode": self.mode,
            "auc": self.auc,
            "auc_equal": self.auc_equal,
        }


def fit_aspect_weights(
    teacher: np.ndarray, base: np.ndarray, aspects: list[str], opts: AspectWeights, seed: int
) -> WeightFit:
    """The weight rule of `iterate.weights`: fitted to separate teacher (1) from base (0) ratings, or fixed."""
    x = np.vstack([teacher, base])
    y = np.r_[np.ones(len(teacher)), np.zeros(len(base))]
    if opts.mode == "fit":
        w, lo, hi = bootstrap_weights(x, y, opts.bootstrap, opts.l2, seed=seed)
    else:
        w = fixed_weights(aspects, opts.fixed)
        lo = hi = w
    return WeightFit(aspects, w, lo, hi, opts.mode, separation_auc(x @ w, y), separation_auc(x.mean(1), y))


def equal_weights(aspects: list[str]) -> WeightFit:
    """No scoring (the ablation): equal weights, nothing measured."""
    w = np.full(len(aspects), 1 / len(aspects))
    return WeightFit(aspects, w, w, w, "none", float("nan"), float("nan"))


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
