"""The sign-flip test's exact path (a convolution over a lattice of small fractions equals full enumeration),
the Holm adjustment that the claims' verdicts read, and rate intervals over clustered samples."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from scoder_lib.core import stats
from scoder_lib.core.io import write_json
from scoder_lib.core.records import HeldoutSample
from scoder_lib.core.run import Run
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


def _held(seed_id: str, j: int, status: str) -> HeldoutSample:
    return HeldoutSample("p", "s", "t", "f", 1, status, seed_id=seed_id, sample=j)


def test_the_yardstick_summary_clusters_by_snippet():
    rows = [_held(f"k{i}", j, "passed" if i < 10 else "unparsed") for i in range(40) for j in range(2)]
    clustered, flat = yardstick.summarize(rows), synthesis.summarize(rows)
    assert clustered["valid_rate"] == flat["valid_rate"] == 0.25
    assert clustered["valid_ci_high"] - clustered["valid_ci_low"] > 1.3 * (flat["valid_ci_high"] - flat["valid_ci_low"])


def test_a_single_cluster_is_one_witness():
    lo, hi = stats.cluster_wilson([True] * 5 + [False] * 5, ["only"] * 10)
    assert (lo, hi) == pytest.approx(stats._wilson_rate(0.5, 1, 1.96))
    plain = stats.wilson(5, 10)
    assert hi - lo > 1.5 * (plain[1] - plain[0])  # far wider than 10 independent samples would give


def test_paired_delta_refuses_cluster_keys_that_do_not_match_the_items():
    with pytest.raises(ValueError, match="cluster keys"):
        stats.paired_delta([0] * 10, [1] * 5 + [0] * 5, clusters=["x", "y", "z"])


def test_yardstick_compare_pairs_each_snippet_sample_once():
    a = [_held(f"k{i}", j, "failed") for i in range(20) for j in range(2)]
    b = [_held(f"k{i}", j, "passed" if i < 8 else "failed") for i in range(20) for j in range(2)]
    d = yardstick.compare(a, b, "valid")
    assert d["delta"] == pytest.approx(0.4) and d["only_b"] == 16 and d["ci_low"] > 0
    assert yardstick.compare(a, b, "parsed")["delta"] == 0.0  # both sides parse everything
    repeated = [*b[:-1], _held("k19", 0, "failed")]  # (k19, 0) twice, (k19, 1) missing: same length
    with pytest.raises(ValueError, match="once each"):
        yardstick.compare(a, repeated)
    with pytest.raises(ValueError, match="valid or parsed"):
        yardstick.compare(a, b, "pass")


def test_a_p_that_could_not_be_computed_resolves_nothing():
    assert claims.verdict(1.0, 3.0, float("nan")) == claims.NOT_RESOLVED
    assert claims.verdict(1.0, 3.0, None) == "supported"  # no test for the row: the interval decides
    assert claims.verdict(1.0, 3.0, 0.01) == "supported" and claims.verdict(-3.0, -1.0, 0.01) == "contradicted"
    assert claims.verdict(-1.0, 3.0, 0.01) == claims.NOT_RESOLVED  # p below alpha, the interval straddles zero


def test_claims_adjust_within_each_claim_and_keep_only_the_method_arm(tmp_path, monkeypatch, smoke_cfg):
    """The report's claim table from a run's files: one Holm family per claim (a p that passes alone fails
    beside its claim's other rows), student rows only where the method arm is b, effects in points b - a."""
    monkeypatch.setenv("SCODER_OUTPUTS", str(tmp_path))
    run = Run("r", "smoke", smoke_cfg)
    d02 = {"heldout_yardstick": 80}
    for what, (lo, hi, p) in {"valid": (0.05, 0.3, 0.01), "parsed": (0.1, 0.5, 0.03)}.items():
        d02 |= {
            f"enhanced_vs_base_{what}_{k}": v
            for k, v in zip(("delta", "ci_low", "ci_high", "p_value"), (0.2, lo, hi, p))
        }
    write_json(run.stage_dir("02_seed") / "metrics.json", d02)
    d04 = {"heldout_n": 80} | {
        f"vs_control_{w}_{k}": v
        for w in ("valid", "parsed")
        for k, v in zip(("delta", "ci_low", "ci_high", "p_value"), (0.1, 0.01, 0.2, 0.04))
    }
    write_json(run.stage_dir("04_influence", 1) / "metrics.json", d04)
    paired = pd.DataFrame(
        [  # (benchmark, a, b, delta, ci_low, ci_high, p)
            ("humaneval", "base", "scoder", 3.0, 0.5, 6.0, 0.02),
            ("humaneval+", "base", "scoder", 2.0, 0.2, 4.0, 0.04),
            ("humaneval", "teacher_only", "scoder", -4.0, -7.0, -1.0, 0.001),
            ("humaneval", "base", "teacher_only", 5.0, 2.0, 8.0, 0.001),  # no method arm: not a claim
        ],
        columns=["benchmark", "a", "b", "delta", "ci_low", "ci_high", "p_value"],
    ).assign(n=164)
    (run.stage_dir("06_evaluate")).mkdir(parents=True)
    paired.to_csv(run.stage_dir("06_evaluate") / "paired.csv", index=False)
    table = claims.claims(run).set_index("evidence")
    verdicts = table.verdict.to_dict()
    assert len(table) == 2 + 2 + 3  # 02's two rates, the control's two, three student rows
    assert verdicts["held-out yardstick, enhanced minus base, valid rate"] == "supported"  # 0.01, 0.03 -> 0.02, 0.03
    assert set(v for k, v in verdicts.items() if "random control" in k) == {claims.NOT_RESOLVED}  # 0.04 twice -> 0.08
    he = "humaneval: pass@1 of scoder minus base"
    assert table.loc[he, "p (Holm)"] == claims.p_text(0.04) and verdicts[he] == "supported"
    assert verdicts["humaneval+: pass@1 of scoder minus base"] == "supported"
    worse = "humaneval: pass@1 of scoder minus teacher_only"
    assert verdicts[worse] == "contradicted" and table.loc[worse, "effect (points)"] == -4.0
    assert "humaneval: pass@1 of teacher_only minus base" not in verdicts
