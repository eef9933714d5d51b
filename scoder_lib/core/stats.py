"""Small statistics used across reports: intervals, diversity, bootstrap."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95% interval for a binomial rate (sane at 0 and n, unlike the normal interval)."""
    if n == 0:
        return (0.0, 1.0)
    return _wilson_rate(successes / n, n, z)


def cluster_wilson(hits: Sequence[bool], clusters: Sequence[str], z: float = 1.96) -> tuple[float, float]:
    """Wilson 95% interval for a rate whose items come in correlated clusters (a snippet's samples).

    Why: two samples of one snippet are not two independent witnesses; treating them as such narrows
    the interval. The cluster-robust (ratio-estimator) variance of the rate gives a design effect
    deff = var_cluster / var_binomial, floored at 1 so clustering never narrows the interval; Wilson is
    then taken at the effective size n / deff (Korn and Graubard's effective-sample-size interval). At a
    rate of 0 or 1 nothing is known of the correlation: deff 1, plain Wilson. A single cluster is one
    witness of the population of clusters, however many items it holds: Wilson at n = 1.
    """
    y = np.asarray(hits, dtype=float)
    n = len(y)
    if len(clusters) != n:
        raise ValueError(f"cluster_wilson: {len(clusters)} cluster keys for {n} items")
    if n == 0:
        return (0.0, 1.0)
    p = float(y.mean())
    keys = list(dict.fromkeys(clusters))
    if len(keys) == 1:
        return _wilson_rate(p, 1, z)
    if p in (0.0, 1.0):
        return wilson(int(y.sum()), n, z)
    index = {k: i for i, k in enumerate(keys)}
    of = np.array([index[c] for c in clusters])
    total, size = np.bincount(of, y, len(keys)), np.bincount(of, None, len(keys))
    c = len(keys)
    var_cluster = c / (c - 1) * float(((total - p * size) ** 2).sum()) / n**2
    deff = max(1.0, var_cluster / (p * (1 - p) / n))
    n_eff = n / deff
    return _wilson_rate(p, n_eff, z)


def _wilson_rate(p: float, n: float, z: float) -> tuple[float, float]:
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct-n: unique word n-grams over all word n-grams of a set of texts (diversity)."""
    grams = [tuple(words[i : i + n]) for t in texts for words in [t.split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def mean_ci(values: Sequence[float], n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and a percentile-bootstrap 95% interval."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return (float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    boots = rng.choice(x, size=(n_boot, len(x)), replace=True).mean(axis=1)
    return float(x.mean()), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: a binomial test on the discordant pairs (1.0 when there are none)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_delta(
    a: Sequence[float], b: Sequence[float], clusters: Sequence[str] | None = None, n_boot: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Mean of `b` minus mean of `a` on the same items (0/1 verdicts, or scores in [0, 1] such as the share
    of a problem's tests passed), with a paired bootstrap 95% interval and a p-value.

    Items are resampled by cluster (e.g. a snippet's several samples move together), so correlated
    samples do not narrow the interval. The p-value is McNemar's exact test for 0/1 items that are each
    their own cluster; otherwise the sign-flip test on each cluster's summed difference (the samples of
    one snippet flip together, so two samples of a snippet do not count as two witnesses). `only_a` /
    `only_b` count the items where one side scored higher.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired_delta needs the same items on both sides: {x.shape} vs {y.shape}")
    n = len(x)
    if clusters is not None and len(clusters) != n:
        raise ValueError(f"paired_delta: {len(clusters)} cluster keys for {n} items")
    if n == 0:
        return {
            "n": 0,
            "rate_a": float("nan"),
            "rate_b": float("nan"),
            "delta": float("nan"),
            "ci_low": float("nan"),
            "ci_high": float("nan"),
            "p_value": 1.0,
            "only_a": 0,
            "only_b": 0,
        }
    keys = list(clusters) if clusters is not None else list(range(n))
    groups = [np.flatnonzero(np.asarray([k == g for k in keys])) for g in dict.fromkeys(keys)]
    diff_sum = np.array([(y[idx] - x[idx]).sum() for idx in groups])
    size = np.array([len(idx) for idx in groups])
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(groups), size=(n_boot, len(groups)))
    boots = diff_sum[pick].sum(1) / size[pick].sum(1)
    only_a, only_b = int((x > y).sum()), int((y > x).sum())
    binary = np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all()
    return {
        "n": n,
        "rate_a": float(x.mean()),
        "rate_b": float(y.mean()),
        "delta": float(y.mean() - x.mean()),
        "ci_low": float(np.percentile(boots, 2.5)),
        "ci_high": float(np.percentile(boots, 97.5)),
        "p_value": mcnemar_p(only_a, only_b) if binary and size.max() == 1 else sign_flip_p(diff_sum, seed=seed),
        "only_a": only_a,
        "only_b": only_b,
    }


EXACT_SIGN_FLIPS = 16  # up to this many non-zero differences every sign pattern is enumerated
MAX_DENOMINATOR = 1000  # differences that are fractions with denominators up to this are summed exactly
MAX_LATTICE_WORK = 50_000_000  # items x support of the exact null distribution: beyond it, Monte Carlo


def _on_lattice(d: np.ndarray) -> np.ndarray | None:
    """Integer magnitudes k with |d| = k / q for a common denominator q, or None when d is not such a lattice.

    Why: a paired difference of pass rates or of per-assert shares is a fraction with a small
    denominator (a cluster of 2 samples: halves; 3 or 4 asserts: twelfths), so its sign-flip null
    distribution is a convolution over integers: exact at any size, no Monte Carlo floor or noise near
    alpha.
    """
    fracs = [Fraction(float(x)).limit_denominator(MAX_DENOMINATOR) for x in np.abs(d)]
    if any(abs(float(f) - abs(x)) > 1e-9 for f, x in zip(fracs, d)):
        return None
    q = math.lcm(*(f.denominator for f in fracs))
    k = np.array([f.numerator * (q // f.denominator) for f in fracs], dtype=np.int64)
    return k if q <= MAX_DENOMINATOR and len(k) * (2 * int(k.sum()) + 1) <= MAX_LATTICE_WORK else None


def sign_flip_p(diffs: Sequence[float], n_perm: int = 20000, seed: int = 0) -> float:
    """Two-sided paired permutation p for a summed difference: each item's difference keeps its size and
    takes either sign. Exact whenever the differences lie on a lattice of small fractions (pass rates,
    per-assert shares: `_on_lattice`) or number at most `EXACT_SIGN_FLIPS`; otherwise Monte Carlo
    ((hits + 1) / (n_perm + 1)). For 0/1 scores it is McNemar's exact test.
    """
    d = np.asarray(diffs, dtype=float)
    d = d[d != 0]
    if len(d) == 0:
        return 1.0
    observed = abs(d.sum())
    if len(d) <= EXACT_SIGN_FLIPS:
        signs = 1.0 - 2.0 * ((np.arange(2 ** len(d))[:, None] >> np.arange(len(d))) & 1)
        return float((np.abs(signs @ d) >= observed - 1e-9).mean())
    k = _on_lattice(d)
    if k is not None:
        total = int(k.sum())
        dist = np.zeros(2 * total + 1)  # P(sum of signed k = s - total) under the null
        dist[total] = 1.0
        for step in k:
            dist = 0.5 * (np.roll(dist, int(step)) + np.roll(dist, -int(step)))  # support never wraps
        sums = np.abs(np.arange(-total, total + 1))
        obs = abs(int(np.sum(np.sign(d) * k)))
        return float(min(1.0, dist[sums >= obs].sum()))
    signs = np.random.default_rng(seed).choice((-1.0, 1.0), size=(n_perm, len(d)))
    hits = int((np.abs(signs @ d) >= observed - 1e-9).sum())
    return (hits + 1) / (n_perm + 1)
