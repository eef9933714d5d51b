"""The sign-flip test's exact path (a convolution over a lattice of small fractions equals full enumeration),
the Holm adjustment that the claims' verdicts read, and rate intervals over clustered samples."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from scoder_lib.core import stats
from scoder_lib.core.records import HeldoutSample
from scoder_lib.method import synthesis, yardstick
from scoder_lib.pipeline import claims


def _enumerated(d: list[float]) -> float:
    d = [x for x in d if x != 0]
    obs = abs(sum(d))
    hits = sum(
        abs(sum(s * x for s, x in zip(signs, d))) >= obs - 1e-9 for signs in itertools.product((1, -1), repeat=len(d))
    )
    return hits / 2 ** len(d)


@pytest.mark.parametrize("values", [(-2, -1, 1, 2), (-1, -2 / 3, -1 / 3, 1 / 3, 2 / 3, 1, 0.25, -0.75)])
def test_lattice_p_equals_enumeration(monkeypatch, values):
    rng = np.random.default_rng(5)
    d = list(rng.choice(values, size=14) + (0.5 if values[0] == -2 else 0) * rng.choice((0, 1), size=14))
    monkeypatch.setattr(stats, "EXACT_SIGN_FLIPS", 0)  # force the lattice path on a size enumeration can check
    assert stats._on_lattice(np.abs(np.array([x for x in d if x]))) is not None
    assert stats.sign_flip_p(d) == pytest.approx(_enumerated(d), rel=1e-9)


def test_large_samples_get_exact_tiny_p_not_a_monte_carlo_floor():
    # 36 snippets that all favour one side: exact p = 2 / 2**36, far below Monte Carlo's 1 / 20001
    assert stats.sign_flip_p([1.0] * 36) == pytest.approx(2 / 2**36)
    assert stats.sign_flip_p([1.0, -1.0] * 20) == 1.0


def test_irrational_differences_fall_back_to_monte_carlo():
    d = np.sqrt(np.arange(2, 40))  # no small common denominator
    assert stats._on_lattice(d) is None
    p = stats.sign_flip_p(d, n_perm=2000)
    assert p == pytest.approx(1 / 2001)


def test_holm_adjusts_within_a_claim_and_keeps_missing_p():
    adjusted = claims.holm([0.01, None, 0.04, 0.03])
    assert adjusted[1] is None
    assert (
        adjusted[0] == pytest.approx(0.03) and adjusted[3] == pytest.approx(0.06) and adjusted[2] == pytest.approx(0.06)
    )
    # a row that alone would pass at 0.05 is not resolved once its claim's other tests are counted
    assert claims.verdict(0.5, 2.0, adjusted[3]) == claims.NOT_RESOLVED
    assert claims.p_text(2.9e-11) == "< 0.0001" and claims.p_text(0.06151) == "0.0615"


# ----------------------------------------------------------------------------- rates over clustered samples
def test_duplicated_samples_count_once():
    # every snippet's two samples agree: the 2c samples carry the information of c (less one, the
    # small-sample factor of the cluster-robust variance), so the interval is plain Wilson's over c - 1
    hits = [True] * 12 + [False] * 28
    doubled = [h for h in hits for _ in range(2)]
    keys = [f"s{i}" for i in range(len(hits)) for _ in range(2)]
    lo, hi = stats.cluster_wilson(doubled, keys)
    want = stats._wilson_rate(12 / 40, 39, 1.96)
    assert (lo, hi) == pytest.approx(want)
    plain = stats.wilson(24, 80)
    assert lo < plain[0] and hi > plain[1]  # wider than pretending 80 independent samples


def test_clustering_never_narrows_and_leaves_the_edges_alone():
    keys = [f"s{i // 2}" for i in range(40)]
    split = [i % 2 == 0 for i in range(40)]  # one hit, one miss per snippet: no between-snippet variance
    assert stats.cluster_wilson(split, keys) == pytest.approx(stats.wilson(20, 40))
    assert stats.cluster_wilson([False] * 40, keys) == stats.wilson(0, 40)
    with pytest.raises(ValueError, match="cluster keys"):
        stats.cluster_wilson([True, False], ["a"])


def test_the_yardstick_summary_clusters_by_snippet():
    def sample(seed_id: str, j: int, ok: bool) -> HeldoutSample:
        status = "passed" if ok else "unparsed"
        return HeldoutSample("p", "s", "t", "f", 1, status, seed_id=seed_id, sample=j)

    rows = [sample(f"k{i}", j, i < 10) for i in range(40) for j in range(2)]
    clustered, flat = yardstick.summarize(rows), synthesis.summarize(rows)
    assert clustered["valid_rate"] == flat["valid_rate"] == 0.25
    assert clustered["valid_ci_high"] - clustered["valid_ci_low"] > 1.3 * (flat["valid_ci_high"] - flat["valid_ci_low"])
