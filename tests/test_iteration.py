"""Iteration part 1: multi-checkpoint sampling, snippet allocation, aspect weights, selection."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from scoder_lib.core.config import REPO_ROOT, ModelSpec, TrainOptions
from scoder_lib.core.io import write_json, write_jsonl
from scoder_lib.core.params import load_config
from scoder_lib.core.records import Candidate
from scoder_lib.core.run import Run, StageRef
from scoder_lib.data.pool import allocate, snippet_key
from scoder_lib.method import candidates, lineage, scoring, seed, selection, weights
from scoder_lib.method.rating import make_rater
from scoder_lib.method.train import IGNORE, encode

POOL = [{"id": str(i), "text": f"def f{i}(x):\n    return x + {i}\n"} for i in range(40)]


def _with_iterate(cfg, **update):
    return cfg.model_copy(update={"iterate": cfg.iterate.model_copy(update=update)})


def test_candidates_are_k_times_m_times_n(micro_checkpoints, smoke_cfg, tmp_path):
    cfg = _with_iterate(smoke_cfg, samples_per_checkpoint=3, min_status="parsed")
    snippets = [p["text"] for p in POOL[:4]]
    cands = candidates.sample(cfg, [str(p) for p in micro_checkpoints], snippets, iteration=1, cache_dir=tmp_path)
    assert len(cands) == 4 * 2 * 3
    assert len({c.cand_id for c in cands}) == len(cands)
    assert {(c.checkpoint, c.sample) for c in cands} == {(m, n) for m in range(2) for n in range(3)}
    # eligibility follows the verdict: a random micro model never writes a parsable sample
    assert [c.eligible for c in cands] == [c.status in ("failed", "passed") for c in cands]
    assert Candidate.from_json(cands[0].to_json()) == cands[0]  # the file format round-trips


def test_sampling_only_the_last_checkpoint_draws_what_the_method_draws_from_it(micro_checkpoints, smoke_cfg, tmp_path):
    """The M = 1 ablation samples the last checkpoint with that checkpoint's own seeds: its candidates are
    the full method's from that checkpoint (paired), not a fresh draw under the first checkpoint's seeds."""
    cfg = _with_iterate(smoke_cfg, samples_per_checkpoint=2, min_status="parsed")
    snippets = [p["text"] for p in POOL[:3]]
    ckpts = [str(p) for p in micro_checkpoints]
    full = candidates.sample(cfg, ckpts, snippets, iteration=1, cache_dir=tmp_path)
    last = candidates.sample(cfg, ckpts[-1:], snippets, iteration=1, cache_dir=tmp_path, first=len(ckpts) - 1)
    assert {c.checkpoint for c in last} == {1}
    assert [(c.cand_id, c.raw) for c in last] == [(c.cand_id, c.raw) for c in full if c.checkpoint == 1]
    first_seeds = [(c.cand_id, c.raw) for c in full if c.checkpoint == 0]
    assert [c.raw for c in last] != [raw for _, raw in first_seeds]  # the two checkpoints' streams differ


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


def test_lineage_reads_what_earlier_iterations_used(tmp_path, monkeypatch, smoke_cfg):
    monkeypatch.setenv("SCODER_OUTPUTS", str(tmp_path))
    run = Run("r", "smoke", smoke_cfg)
    for t, chunk in [(1, POOL[:3]), (2, POOL[3:6])]:
        folder = run.stage_dir("03_sample_score", t)
        folder.mkdir(parents=True)
        write_jsonl(folder / lineage.USED, [{"key": snippet_key(p["text"]), "id": p["id"]} for p in chunk])
    assert lineage.snippets_used_before(run, 1) == set()
    assert lineage.snippets_used_before(run, 3) == {snippet_key(p["text"]) for p in POOL[:6]}


def test_seed_snippets_are_excluded():
    s = seed.load(REPO_ROOT / "data" / "seed" / "seed_v1.jsonl")
    pool = [{"id": r.id, "text": r.snippet} for r in s.rows] + POOL
    got = allocate(pool, s.snippet_keys(), 20, seed=3, salt="iteration-1")
    assert {p["id"] for p in got} <= {p["id"] for p in POOL}


def test_snippets_from_the_heldout_files_are_excluded():
    """Siblings of a held-out snippet (same source file, other text) never reach a synthesizer or a student."""
    s = seed.load(REPO_ROOT / "data" / "seed" / "seed_compact_v2.jsonl")
    held = sorted(s.heldout_files())
    origin, path = held[0].split(":", 1)
    siblings = [
        {"id": f"sib{i}", "text": f"def g{i}():\n    return {i}\n", "source": origin, "path": path} for i in range(30)
    ]
    others = [dict(p, source="stdlib", path="elsewhere.py") for p in POOL]
    pool = siblings + others
    got = allocate(pool, s.snippet_keys(), 40, seed=3, salt="final", exclude_files=s.heldout_files())
    assert {p["id"] for p in got} == {p["id"] for p in others}
    # a training file is not held out: its siblings stay eligible
    train_origin, train_path = seed.source_file(s.train[0]).split(":", 1)
    pool = [dict(p, source=train_origin, path=train_path) for p in siblings] + others
    got = allocate(pool, s.snippet_keys(), 60, seed=3, salt="final", exclude_files=s.heldout_files())
    assert len(got) == 60


# ----------------------------------------------------------------------------- weights
def test_weight_fitting_recovers_known_weights():
    rng = np.random.default_rng(0)
    true = np.array([0.5, 0.3, 0.2, 0.0, 0.0])
    x = rng.uniform(0, 9, size=(4000, 5))
    logits = 3.0 * (x @ true - 4.5)
    y = (rng.uniform(size=4000) < 1 / (1 + np.exp(-logits))).astype(float)
    w = weights.fit_weights(x, y, l2=0.1, steps=6000, lr=0.2)
    assert np.allclose(w, true, atol=0.05), w
    assert w.min() >= 0 and np.isclose(w.sum(), 1.0)


def test_bootstrap_intervals_cover_the_estimate():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 9, size=(300, 3))
    y = (x[:, 0] + rng.normal(0, 1, 300) > 4.5).astype(float)
    w, lo, hi = weights.bootstrap_weights(x, y, n_boot=30, l2=1.0)
    assert (lo <= w + 1e-9).all() and (w <= hi + 1e-9).all() and w[0] > 0.6


def test_separation_auc():
    assert weights.separation_auc(np.array([3.0, 4.0, 1.0, 2.0]), np.array([1, 1, 0, 0])) == 1.0
    assert weights.separation_auc(np.array([1.0, 1.0]), np.array([1, 0])) == 0.5


def _cand(key: str, score: float | None, eligible: bool = True) -> Candidate:
    return Candidate(
        "p", "s", "t", "f", 1, "passed", cand_id=f"{key}{score}", snippet_key=key, eligible=eligible, score=score
    )


def test_initial_selection_best_per_snippet_then_top_fraction():
    cands = [
        _cand(k, s, e)
        for k, s, e in [
            ("a", 5, True),
            ("a", 7, True),
            ("a", 9, False),
            ("b", 3, True),
            ("c", 8, True),
            ("d", 1, False),
        ]
    ]
    sel = selection.best_per_snippet(cands, keep_top_fraction=0.5)
    assert [c.cand_id for c in sel] == ["c8", "a7"]  # half of the 4 snippets sampled: b3 cut, d has nothing eligible


def test_selection_counts_do_not_depend_on_how_many_were_eligible():
    """Two runs that sample the same 48 snippets (the method and an ablation, or two iterations) select the
    same number, however many snippets their synthesizers made eligible; fewer only when too few were."""
    strong = [_cand(f"k{i}", float(i)) for i in range(48)]
    weak = [_cand(f"k{i}", float(i), eligible=i % 8 != 0) for i in range(48)]  # 42 snippets eligible
    starved = [_cand(f"k{i}", float(i), eligible=i < 20) for i in range(48)]
    for pick in (lambda c: selection.best_per_snippet(c, 0.75), lambda c: selection.random_per_snippet(c, 0.75, 0)):
        assert len(pick(strong)) == len(pick(weak)) == selection.select_count(strong, 0.75) == 36
        assert len(pick(starved)) == 20  # a shortfall: all there are


def test_aspect_weights_fit_or_fixed():
    rng = np.random.default_rng(2)
    teacher, base = rng.normal(6, 1, size=(60, 2)), rng.normal(4, 1, size=(60, 2))
    teacher[:, 1] = base[:, 1] = rng.normal(5, 1, size=60)  # aspect 2 carries no signal
    opts = load_config("tiny").iterate.weights.model_copy(update={"bootstrap": 20})
    fit = weights.fit_aspect_weights(teacher, base, ["a", "b"], opts, seed=0)
    assert fit.weights[0] > 0.8 and fit.auc > 0.85 and fit.auc > fit.auc_equal
    fixed = weights.fit_aspect_weights(
        teacher, base, ["a", "b"], opts.model_copy(update={"mode": "fixed", "fixed": {"a": 1.0, "b": 3.0}}), seed=0
    )
    assert np.allclose(fixed.weights, [0.25, 0.75]) and (fixed.low == fixed.weights).all()


def test_scores_apply_to_eligible_candidates_only():
    cands = [_cand("a", None), _cand("b", None, eligible=False), _cand("c", None)]
    ratings = scoring.Ratings(np.array([[2.0, 4.0], [6.0, 8.0]]), np.array([[2, 4], [6, 8]]), ["x", "y"])
    scoring.apply_scores(cands, ratings, np.array([0.5, 0.5]), ["x", "y"])
    assert [c.score for c in cands] == [3.0, None, 7.0]
    assert cands[1].ratings == {"x": None, "y": None} and cands[2].digits == {"x": 6, "y": 8}
    scoring.apply_scores(cands, None, np.array([0.5, 0.5]), ["x", "y"])  # no scoring: ties at 0
    assert [c.score for c in cands] == [0.0, None, 0.0]


def test_influence_keeps_the_top_fraction():
    cands = [_cand(k, 1.0) for k in "abcd"]
    scores = np.array([0.1, 0.9, 0.5, 0.9])
    kept = selection.keep(cands, scores, keep_fraction=0.5, select="influence", seed=0)
    assert [c.snippet_key for c in kept] == ["b", "d"] and kept[0].influence == 0.9  # stable on ties
    assert selection.keep_count(4, 4, 0.1) == 1 and selection.keep_count(0, 0, 0.5) == 0
    # a fraction of what 03 selected, not of what was short enough to train on: the same count in every run
    assert selection.keep_count(36, 33, 0.5) == selection.keep_count(36, 36, 0.5) == 18
    assert selection.keep_count(36, 10, 0.5) == 10
    kept = selection.keep(cands[:3], scores[:3], keep_fraction=0.5, select="influence", seed=0, selected=4)
    assert [c.snippet_key for c in kept] == ["b", "c"]  # 2 of the 4 selected, though one was left out


def test_nothing_survives_carries_the_previous_synthesizer(tmp_path):
    prev = lineage.Synthesizer(["/c/ckpt-1", "/c/ckpt-2"], "/c/ckpt-2", 2, "enhanced")
    carried = lineage.carry_over(tmp_path, prev, iteration=3)
    assert carried.final == prev.final and "carried over" in carried.note
    assert lineage.load_synthesizer(tmp_path) == carried
    assert prev.sampling_checkpoints(1) == ["/c/ckpt-2"] and prev.sampling_checkpoints(None) == prev.checkpoints


def test_rubric_names_every_default_aspect():
    _, questions = scoring.rubric("v1")
    assert set(load_config("tiny").iterate.aspects) <= set(questions)
    with pytest.raises(ValueError, match="unknown aspect"):
        scoring.rating_prompt("s", "t", ["elegance"])


@pytest.mark.slow
def test_real_scorer_prefers_a_good_candidate(cache_dir):
    """On SmolLM2-135M, a correct, clear sample must be rated above a broken one (expected digit)."""
    rater = make_rater(ModelSpec(name="smollm2-135m-instruct"), cache_dir)
    rater.store = None
    snippet = "def mean(xs):\n    return sum(xs) / len(xs)\n"
    good = (
        "[Problem]\nWrite a function `average(values: list[float]) -> float` that returns the arithmetic mean "
        "of a non-empty list of numbers.\n\n[Solution]\n```python\ndef average(values):\n"
        "    return sum(values) / len(values)\n```\n\n[Tests]\n```python\nassert average([1, 2, 3]) == 2\n"
        "assert average([5]) == 5\nassert average([-1, 1]) == 0\n```"
    )
    broken = (
        "[Problem]\nzzz qq\n\n[Solution]\n```python\ndef (:\n  retrn ]]\n```\n\n[Tests]\n```python\nassert False\n```"
    )
    good2 = (
        "[Problem]\nWrite `count_words(text: str) -> dict[str, int]` returning how often each lower-cased word "
        "occurs.\n\n[Solution]\n```python\ndef count_words(text):\n    counts = {}\n"
        "    for w in text.lower().split():\n"
        "        counts[w] = counts.get(w, 0) + 1\n    return counts\n```\n\n[Tests]\n```python\n"
        "assert count_words('a b a') == {'a': 2, 'b': 1}\nassert count_words('') == {}\n```"
    )
    broken2 = "[Problem]\nThe snippet.\n\n[Solution]\n```python\nx = = 3\n```\n\n[Tests]\n```python\nprint(1)\n```"
    aspects = load_config("tiny").iterate.aspects
    r = scoring.rate(rater, [snippet] * 4, [good, broken, good2, broken2], aspects)
    means = r.expected.mean(1)
    assert means[0] > means[1] and means[2] > means[3], r.expected


# ----------------------------------------------------------------------------- stage 04's inputs and pools
def _stage_run(tmp_path, monkeypatch, cfg, cache_dir, checkpoints: list[str]) -> Run:
    """A run whose 02 synthesizer has `checkpoints` and whose 03 (iteration 1) has finished, empty."""
    monkeypatch.setenv("SCODER_OUTPUTS", str(tmp_path))
    run = Run("r", "smoke", cfg.model_copy(update={"cache_dir": str(cache_dir)}))
    seed_dir, s03 = run.stage_dir("02_seed"), run.stage_dir("03_sample_score", 1)
    seed_dir.mkdir(parents=True)
    s03.mkdir(parents=True)
    write_json(seed_dir / lineage.SYNTH, lineage.Synthesizer(checkpoints, checkpoints[-1], 3, "enhanced").to_json())
    write_json(run.marker(StageRef("03_sample_score", 1)), {})
    for name in ("selected.jsonl", "candidates.jsonl"):
        write_jsonl(s03 / name, [])
    return run


def test_influence_uses_every_checkpoint_when_sampling_uses_one(tmp_path, monkeypatch, smoke_cfg, cache_dir):
    """The M=1 ablation removes multi-checkpoint sampling only: LESS still sums over all checkpoints."""
    ckpts = ["/c/ckpt-1", "/c/ckpt-2", "/c/ckpt-3"]
    run = _stage_run(tmp_path, monkeypatch, _with_iterate(smoke_cfg, checkpoints=1), cache_dir, ckpts)
    inputs = lineage.influence_inputs(run, 1)
    assert [str(p) for p in inputs.checkpoints] == ckpts
    assert lineage.synthesizer_before(run, 1).sampling_checkpoints(run.cfg.iterate.checkpoints) == ckpts[-1:]


def _sized_cands(tok, version: str) -> tuple[list[Candidate], int]:
    """Candidates of known fit at the returned max_seq_len: one that fits whole, one whose response runs
    past it, one whose prompt alone does, and an ineligible one (only the control's pool reads those)."""
    short = "def f(x):\n    return x\n"

    def cand(cid: str, snippet: str, raw: str, eligible: bool = True) -> Candidate:
        return Candidate(
            "p", "s", "t", "f", 1, "passed", raw=raw, cand_id=cid, snippet_key=cid, snippet=snippet, eligible=eligible
        )

    fits = cand("fits", short, "[Problem]\nok")
    prompt = encode(tok, lineage.candidate_example(fits, version), 10**6)["labels"].count(IGNORE)
    cands = [
        fits,
        cand("long_response", short, "word " * 200),
        cand("long_prompt", short + "x = 1\n" * 200, "[Problem]\nok"),
        cand("ineligible", short, "[Problem]\nok", eligible=False),
    ]
    return cands, prompt + 40


def test_too_long_candidates_leave_both_pools(tmp_path, monkeypatch, smoke_cfg, cache_dir, micro_ref):
    """What training would not use whole is neither ranked by influence nor drawn by the control."""
    tok = AutoTokenizer.from_pretrained(micro_ref.path)
    version = smoke_cfg.seed_stage.prompt_version
    cands, max_len = _sized_cands(tok, version)
    ids = lambda cs: [c.cand_id for c in cs]  # noqa: E731
    drop = TrainOptions(max_seq_len=max_len, long_examples="drop")
    truncate = drop.model_copy(update={"long_examples": "truncate"})
    pool = lineage.trainable(cands[:3], tok, version, drop)
    assert ids(pool.fit) == ["fits"] and ids(pool.too_long) == ["long_response", "long_prompt"]
    pool = lineage.trainable(cands[:3], tok, version, truncate)  # a cut response still trains; a cut prompt not
    assert ids(pool.fit) == ["fits", "long_response"] and ids(pool.too_long) == ["long_prompt"]

    # stage 04 through the run: the method's pool (03's selection) and the control's (03's eligible)
    train = smoke_cfg.influence.train.model_copy(update={"max_seq_len": max_len, "long_examples": "drop"})
    inf = smoke_cfg.influence.model_copy(update={"train": train})
    run = _stage_run(tmp_path, monkeypatch, smoke_cfg.model_copy(update={"influence": inf}), cache_dir, ["/c/1"])
    s03 = run.stage_dir("03_sample_score", 1)
    write_jsonl(s03 / "selected.jsonl", [c.to_json() for c in cands[:3]])
    write_jsonl(s03 / "candidates.jsonl", [c.to_json() for c in cands])
    method, control = lineage.method_pool(run, 1, tok), lineage.control_pool(run, 1, tok)
    assert ids(method.fit) == ids(control.fit) == ["fits"]
    assert ids(method.too_long) == ids(control.too_long) == ["long_response", "long_prompt"]
    inputs = lineage.influence_inputs(run, 1)
    assert ids(inputs.candidates) == ["fits"] and len(inputs.candidate_examples) == 1
    assert ids(selection.random_control(control.fit, 1, seed=0, iteration=1)) == ["fits"]


# ----------------------------------------------------------------------------- seeded draws
def _grid(snippets: int, per: int) -> list[Candidate]:
    """`per` eligible candidates for each of `snippets` snippets, cand_id "<snippet>-<position>"."""
    return [
        Candidate("p", "s", "t", "f", 1, "passed", cand_id=f"k{k}-{j}", snippet_key=f"k{k}", eligible=True, score=1.0)
        for k in range(snippets)
        for j in range(per)
    ]


def test_ablation_draws_change_with_the_iteration():
    """The no-scoring and no-influence ablations draw anew each iteration (as the control does), and
    the same iteration draws the same."""
    cands = _grid(20, 4)
    positions = lambda cs: [c.cand_id.split("-")[1] for c in cs]  # noqa: E731
    it1 = selection.random_per_snippet(cands, 1.0, seed=0, iteration=1)
    assert positions(it1) == positions(selection.random_per_snippet(cands, 1.0, seed=0, iteration=1))
    assert positions(it1) != positions(selection.random_per_snippet(cands, 1.0, seed=0, iteration=2))
    assert selection.select_per_snippet(cands, 1.0, False, 0, 1) == it1
    kept = {t: selection.keep(cands, np.zeros(len(cands)), 0.25, "random", seed=0, iteration=t) for t in (1, 2)}
    assert len(kept[1]) == len(kept[2]) == 20 and kept[1] != kept[2]
    assert kept[1] == selection.keep(cands, np.zeros(len(cands)), 0.25, "random", seed=0, iteration=1)


def test_best_per_snippet_keeps_a_zero_score():
    """A best score of 0.0 is a score, not "unrated": a later tie or a worse one does not replace it."""
    cands = [_cand("a", 0.0), _cand("a", -1.0), _cand("b", -2.0), _cand("b", -2.0)]
    cands[3].cand_id = "b-2.0-later"
    sel = selection.best_per_snippet(cands, keep_top_fraction=1.0)
    assert [c.cand_id for c in sel] == ["a0.0", "b-2.0"]


def test_random_control_same_count_same_pool_seeded():
    pool = _grid(6, 3)
    selected = selection.best_per_snippet(pool, keep_top_fraction=1.0)  # 6, one per snippet
    kept = selection.keep(selected, np.arange(6.0), 0.5, "influence", seed=0, iteration=1)
    picked = selection.random_control(pool, len(kept), seed=0, iteration=1)
    ids = [c.cand_id for c in picked]
    assert len(picked) == len(kept) == 3 and set(ids) <= {c.cand_id for c in pool}
    assert len({c.snippet_key for c in picked}) == 3  # one per snippet while snippets last
    assert picked == selection.random_control(pool, 3, seed=0, iteration=1)  # the same seed, the same draw
    others = [selection.random_control(pool, 3, seed=s, iteration=t) for s, t in ((1, 1), (0, 2))]
    assert all(o != picked for o in others)  # another seed or iteration, another draw
    more = selection.random_control(pool, 10, seed=0, iteration=1)  # beyond one per snippet: no repeats
    assert len(more) == 10 and len({c.cand_id for c in more}) == 10 and len({c.snippet_key for c in more}) == 6
