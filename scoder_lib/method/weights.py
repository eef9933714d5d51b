"""The aspect weights: fitted to separate teacher samples from the candidates they will score, or fixed.

Weights are fitted, not hand-set (the paper's rule is not public; this is the project's choice): a
logistic model p(teacher | x) = sigmoid(b + sum_z beta_z x_z) with beta >= 0 separates the teacher's
samples (superior) from the iteration's eligible candidates (not yet); w = beta / sum(beta).
Non-negativity keeps every aspect a "more is better" criterion; normalisation keeps scores on the 0-9
scale. Aspects whose ratings barely vary carry no signal and get weight 0 (standardising them would
blow noise up).

Why the candidates and not the base synthesizer's outputs: the weights rank eligible candidates, so
they are fitted on that population. A small base model's outputs mostly do not parse (tiny: 23 of 24),
and a fit against them learnt "teacher vs broken output" (all weight on one aspect) instead of what
separates a good exercise from a parsed but weaker one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scoder_lib.core.config import AspectWeights
from scoder_lib.core.logs import get_logger

log = get_logger(__name__)

MIN_PER_CLASS = 5  # below this on either side (teacher, candidates) a fit is noise: equal weights
TOO_FEW = "equal: too few samples"  # the modes in which "fit" ends with equal weights
NO_GAIN = "equal: fit no better out of sample"


def fit_weights(
    x: np.ndarray, y: np.ndarray, l2: float = 1.0, steps: int = 3000, lr: float = 0.05, min_sd: float = 0.05
) -> np.ndarray:
    """Non-negative logistic regression (projected gradient descent); returns normalised weights.

    x: (n, Z) aspect ratings on the 0-9 scale; y: 1 for superior (teacher) samples, 0 otherwise.
    Columns with standard deviation below `min_sd` get weight 0; if none is left, equal weights.
    """
    n, z = x.shape
    sd = x.std(0)
    live = sd >= min_sd
    if not live.any():
        return np.full(z, 1.0 / z)
    xs = (x[:, live] - x[:, live].mean(0)) / sd[live]  # standardise for conditioning, then map back
    beta, b = np.full(int(live.sum()), 0.1), 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(xs @ beta + b)))
        g_beta = xs.T @ (p - y) / n + l2 * beta / n
        beta = np.maximum(beta - lr * g_beta, 0.0)  # projection onto beta >= 0
        b -= lr * float(np.mean(p - y))
    w = np.zeros(z)
    w[live] = beta / sd[live]  # coefficients on the original 0-9 scale
    if w.sum() == 0:  # no aspect helps: equal weights over the informative ones
        w[live] = 1.0
    return w / w.sum()


def bootstrap_weights(
    x: np.ndarray, y: np.ndarray, n_boot: int, l2: float, seed: int = 0, steps: int = 3000, min_sd: float = 0.05
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point estimate and 95% percentile intervals (low, high); every refit optimised like the estimate."""
    rng = np.random.default_rng(seed)
    w = fit_weights(x, y, l2, steps=steps, min_sd=min_sd)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if len(set(y[idx])) == 2:
            boots.append(fit_weights(x[idx], y[idx], l2, steps=steps, min_sd=min_sd))
    b = np.array(boots) if boots else w[None]
    return w, np.percentile(b, 2.5, axis=0), np.percentile(b, 97.5, axis=0)


def separation_auc(scores: np.ndarray, y: np.ndarray) -> float:
    """Probability that a random teacher sample outscores a random candidate (ties count half)."""
    pos, neg = scores[y == 1], scores[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def cv_auc(x: np.ndarray, y: np.ndarray, folds: int, seed: int = 0, **fit: Any) -> float:
    """Out-of-sample AUC: stratified k-fold, each fold scored with weights fitted on the others (pooled)."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), dtype=int)
    for label in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == label))
        fold_of[idx] = np.arange(len(idx)) % folds
    scores = np.empty(len(y))
    for k in range(folds):
        test = fold_of == k
        if test.all() or len(set(y[~test])) < 2:
            return float("nan")  # too few samples of a class to fit without this fold
        scores[test] = x[test] @ fit_weights(x[~test], y[~test], **fit)
    return separation_auc(scores, y)


def fixed_weights(aspects: list[str], fixed: dict[str, float]) -> np.ndarray:
    missing = [a for a in aspects if a not in fixed]
    if missing:
        raise ValueError(f"iterate.weights.fixed lacks aspect(s) {missing}")
    w = np.array([fixed[a] for a in aspects], dtype=float)
    return w / w.sum()


@dataclass(frozen=True)
class WeightFit:
    """Aspect weights (summing to 1) with 95% intervals, and how well they separate teacher from candidates."""

    aspects: list[str]
    weights: np.ndarray  # the weights the scores use
    low: np.ndarray  # 95% bootstrap interval of the fit (`fitted`)
    high: np.ndarray
    mode: str
    auc: float  # teacher-vs-candidates separation by `weights`, on the samples the fit saw
    auc_cv: float  # the fit's separation out of sample (k-fold)
    auc_equal: float  # the separation by equal weights
    dropped: list[str] = field(default_factory=list)  # aspects without signal (weight 0 by rule)
    fitted: np.ndarray | None = None  # the fit's point estimate (low/high are its intervals), used or not

    def to_json(self) -> dict[str, Any]:
        return {
            "aspects": self.aspects,
            "weights": self.weights.tolist(),
            "low": self.low.tolist(),
            "high": self.high.tolist(),
            "mode": self.mode,
            "auc": self.auc,
            "auc_cv": self.auc_cv,
            "auc_equal": self.auc_equal,
            "dropped": self.dropped,
            "fitted": None if self.fitted is None else self.fitted.tolist(),
        }


def fit_aspect_weights(
    teacher: np.ndarray, candidates: np.ndarray, aspects: list[str], opts: AspectWeights, seed: int
) -> WeightFit:
    """The weight rule of `iterate.weights`: fitted to separate teacher (1) from candidate (0) ratings, or fixed.

    With fewer than MIN_PER_CLASS samples on either side nothing can be fitted: equal weights, said
    in the log and in `mode` (TOO_FEW), instead of a fit to a handful of points. With `opts.cv_guard`,
    a fit whose out-of-sample AUC does not beat equal weights' AUC is not used either (mode NO_GAIN):
    its weights would rank candidates by noise (a 135M scorer's ratings, tiny: 0.51 out of sample
    against 0.55 for equal weights). The fit, its intervals and its out-of-sample AUC stay in the
    result (`fitted`, `low`, `high`, `auc_cv`) for the report.
    """
    if opts.mode == "none":
        return equal_weights(aspects)
    x = np.vstack([teacher, candidates])
    y = np.r_[np.ones(len(teacher)), np.zeros(len(candidates))]
    equal = equal_weights(aspects).weights
    auc_equal = separation_auc(x @ equal, y)
    if opts.mode == "fixed":
        w = fixed_weights(aspects, opts.fixed)
        auc = separation_auc(x @ w, y)  # nothing fitted: in-sample is out-of-sample
        return WeightFit(aspects, w, w, w, "fixed", auc, auc, auc_equal, fitted=w)
    if min(len(teacher), len(candidates)) < MIN_PER_CLASS:
        log.warning(
            "aspect weights: %d teacher samples and %d eligible candidates, fewer than %d on a side: "
            "equal weights instead of a fit",
            len(teacher),
            len(candidates),
            MIN_PER_CLASS,
        )
        return WeightFit(aspects, equal, equal, equal, TOO_FEW, auc_equal, auc_equal, auc_equal, fitted=equal)
    fit = {"l2": opts.l2, "steps": opts.steps, "min_sd": opts.min_sd}
    fitted, lo, hi = bootstrap_weights(x, y, opts.bootstrap, seed=seed, **fit)
    auc_cv = cv_auc(x, y, opts.cv_folds, seed=seed, **fit)
    dropped = [a for a, sd in zip(aspects, x.std(0)) if sd < opts.min_sd]
    w, mode = fitted, "fit"
    if opts.cv_guard and not auc_cv > auc_equal:  # nan (a fold without a class) counts as no gain
        log.warning(
            "aspect weights: out of sample the fit separates teacher samples from candidates no better than "
            "equal weights (AUC %.3f vs %.3f): equal weights instead",
            auc_cv,
            auc_equal,
        )
        w, mode = equal, NO_GAIN
    return WeightFit(aspects, w, lo, hi, mode, separation_auc(x @ w, y), auc_cv, auc_equal, dropped, fitted)


def equal_weights(aspects: list[str]) -> WeightFit:
    """No scoring (the ablation): equal weights, nothing measured."""
    w = np.full(len(aspects), 1 / len(aspects))
    nan = float("nan")
    return WeightFit(aspects, w, w, w, "none", nan, nan, nan)
