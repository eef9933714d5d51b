"""Iteration part 1: multi-checkpoint sampling, snippet allocation, aspect weights, selection."""

from __future__ import annotations

import numpy as np
import pytest

from scoder_lib import candidates, lineage, scoring, seed
from scoder_lib.config import REPO_ROOT, LoraOptions, ModelSpec, TrainOptions, load_config
from scoder_lib.io import write_jsonl
from scoder_lib.models import prepare
from scoder_lib.pool import allocate, snippet_key
from scoder_lib.stages import stage_dir
from scoder_lib.train import Example, sft

POOL = [{"id": str(i), "text": f"def f{i}(x):\n    return x + {i}\n"} for i in range(40)]


@pytest.fixture(scope="module")
def two_checkpoints(cache_dir, tmp_path_factory):
    ref = prepare(ModelSpec(name="micro"), cache_dir)
    ex = [Example.of([{"role": "user", "content": f"q{i}"}], f"a{i}") for i in range(8)]
    opts = TrainOptions(epochs=1, batch_size=2, num_checkpoints=2, max_seq_len=64, lora=LoraOptions(r=4))
    return [str(p) for p in sft(ex, ref.path, tmp_path_factory.mktemp("synth"), opts, ref.fingerprint).checkpoints]


def test_candidates_are_k_times_m_times_n(two_checkpoints, cache_dir, tmp_path):
    cfg = load_config("smoke")
    cfg = cfg.model_copy(update={"iterate": cfg.iterate.model_copy(update={"samples_per_checkpoint": 3})})
    snippets = [p["text"] for p in POOL[:4]]
    cands = candidates.sample(cfg, two_checkpoints, snippets, iteration=1, cache_dir=tmp_path)
    assert len(cands) == 4 * 2 * 3
    assert len({c["cand_id"] for c in cands}) == len(cands)
    assert {(c["checkpoint"], c["sample"]) for c in cands} == {(m, n) for m in range(2) for n in range(3)}
    assert all(c["eligible"] for c in cands)  # smoke accepts any verdict


def test_allocation_never_reuses_snippets():
    seed_keys = {snippet_key(p["text"]) for p in POOL[:5]}
    it1 = allocate(POOL, seed_keys, 10, seed=0, salt="iteration-1")
    used = seed_keys | {snippet_key(p["text"]) for p in it1}
    it2 = allocate(POOL, used, 10, seed=0, salt="iteration-2")
    final = allocate(POOL, used | {snippet_key(p["text"]) for p in it2}, 10, seed=0, salt="final")
    keys = [{snippet_key(p["text"]) for p in s} for s in (it1, it2, final)]
    assert all(len(k) == 10 for k in keys) and not (keys[0] & keys[1] or keys[1] & keys[2] or keys[0] & keys[2])
    assert not any(k & seed_keys for k in keys)
    assert allocate(POOL, seed_keys, 10, seed=0, salt="iteration-1") == it1  # deterministic
    with pytest.raises(ValueError, match="only"):
        allocate(POOL, used, 100, seed=0, salt="x")


def test_lineage_reads_what_earlier_iterations_used(tmp_path, monkeypatch):
    monkeypatch.setenv("SCODER_OUTPUTS", str(tmp_path))
    for t, chunk in [(1, POOL[:3]), (2, POOL[3:6])]:
        folder = stage_dir("r", "03_sample_score", t)
        folder.mkdir(parents=True)
        write_jsonl(folder / lineage.USED, [{"key": snippet_key(p["text"]), "id": p["id"]} for p in chunk])
    assert lineage.snippets_used_before("r", 1) == set()
    assert lineage.snippets_used_before("r", 3) == {snippet_key(p["text"]) for p in POOL[:6]}


def test_seed_snippets_are_excluded():
    s = seed.load(REPO_ROOT / "data" / "seed" / "seed_v1.jsonl")
    pool = [{"id": r["id"], "text": r["snippet"]} for r in s.rows] + POOL
    got = allocate(pool, s.snippet_keys(), 20, seed=3, salt="iteration-1")
    assert {p["id"] for p in got} <= {p["id"] for p in POOL}


# ----------------------------------------------------------------------------- weights
def test_weight_fitting_recovers_known_weights():
    rng = np.random.default_rng(0)
    true = np.array([0.5, 0.3, 0.2, 0.0, 0.0])
    x = rng.uniform(0, 9, size=(4000, 5))
    logits = 3.0 * (x @ true - 4.5)
    y = (rng.uniform(size=4000) < 1 / (1 + np.exp(-logits))).astype(float)
    w = scoring.fit_weights(x, y, l2=0.1, steps=6000, lr=0.2)
    assert np.allclose(w, true, atol=0.05), w
    assert w.min() >= 0 and np.isclose(w.sum(), 1.0)


def test_bootstrap_intervals_cover_the_estimate():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 9, size=(300, 3))
    y = (x[:, 0] + rng.normal(0, 1, 300) > 4.5).astype(float)
    w, lo, hi = scoring.bootstrap_weights(x, y, n_boot=30, l2=1.0)
    assert (lo <= w + 1e-9).all() and (w <= hi + 1e-9).all() and w[0] > 0.6


def test_separation_auc():
    assert scoring.separation_auc(np.array([3.0, 4.0, 1.0, 2.0]), np.array([1, 1, 0, 0])) == 1.0
    assert scoring.separation_auc(np.array([1.0, 1.0]), np.array([1, 0])) == 0.5


def test_initial_selection_best_per_snippet_then_top_fraction():
    cands = [{"snippet_key": k, "score": s, "eligible": e, "cand_id": f"{k}{s}"}
             for k, s, e in [("a", 5, True), ("a", 7, True), ("a", 9, False), ("b", 3, True), ("c", 8, True), ("d", 1, False)]]
    sel = scoring.select_initial(cands, keep_top_fraction=0.67)
    assert [c["cand_id"] for c in sel] == ["c8", "a7"]  # b3 cut by the fraction; d has nothing eligible


def test_rubric_names_every_default_aspect():
    _, questions = scoring.rubric("v1")
    assert set(load_config("tiny").iterate.aspects) <= set(questions)
    with pytest.raises(ValueError, match="unknown aspect"):
        scoring.rating_prompt("s", "t", ["elegance"])


@pytest.mark.slow
def test_real_scorer_prefers_a_good_candidate(cache_dir):
    """On SmolLM2-135M, a correct, clear sample must be rated above a broken one (expected digit)."""
    from scoder_lib.rating import make_rater

    rater = make_rater(ModelSpec(name="smollm2-135m-instruct"), cache_dir)
    rater.store = None
    snippet = "def mean(xs):\n    return sum(xs) / len(xs)\n"
    good = ("[Problem]\nWrite a function `average(values: list[float]) -> float` that returns the arithmetic mean "
            "of a non-empty list of numbers.\n\n[Solution]\n```python\ndef average(values):\n    return sum(values) / len(values)\n```\n\n"
            "[Tests]\n```python\nassert average([1, 2, 3]) == 2\nassert average([5]) == 5\nassert average([-1, 1]) == 0\n```")
    broken = "[Problem]\nzzz qq\n\n[Solution]\n```python\ndef (:\n  retrn ]]\n```\n\n[Tests]\n```python\nassert False\n```"
    good2 = ("[Problem]\nWrite `count_words(text: str) -> dict[str, int]` returning how often each lower-cased word "
             "occurs.\n\n[Solution]\n```python\ndef count_words(text):\n    counts = {}\n    for w in text.lower().split():\n"
             "        counts[w] = counts.get(w, 0) + 1\n    return counts\n```\n\n[Tests]\n```python\n"
             "assert count_words('a b a') == {'a': 2, 'b': 1}\nassert count_words('') == {}\n```")
    broken2 = "[Problem]\nThe snippet.\n\n[Solution]\n```python\nx = = 3\n```\n\n[Tests]\n```python\nprint(1)\n```"
    aspects = load_config("tiny").iterate.aspects
    r = scoring.rate(rater, [snippet] * 4, [good, broken, good2, broken2], aspects)
    means = r.expected.mean(1)
    assert means[0] > means[1] and means[2] > means[3], r.expected
