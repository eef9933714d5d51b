"""Comparisons a reviewer can trust: arm sizes, teacher data everywhere, fair ablations, independent
checkpoint samples, an honest weight fit, paired statistics, one student prompt format."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from scoder_lib.core.config import AspectWeights, Sampling
from scoder_lib.core.io import write_json
from scoder_lib.core.params import load_config
from scoder_lib.core.records import Candidate, EvalResult, InstructionSample, SeedSample, write_records
from scoder_lib.core.run import Run
from scoder_lib.core.stats import mcnemar_p, paired_delta, sign_flip_p
from scoder_lib.data.benchmarks import Task
from scoder_lib.evaluation.benchrun import asserts_passed_headline, headline
from scoder_lib.evaluation.compare import HELDOUT_TESTS, paired_table
from scoder_lib.evaluation.evaluate import build_prompt, summarize
from scoder_lib.llm import student_format
from scoder_lib.llm.base import GenRequest, prompt_ids
from scoder_lib.llm.models import load
from scoder_lib.method import arms, candidates, instructions, selection, teacher, weights
from scoder_lib.method.train import encode
from scoder_lib.pipeline import claims, costs, study
from scoder_lib.pipeline.plan import describe_arms


# ----------------------------------------------------------------------------- arms at their real sizes
def _set(name: str, n: int) -> instructions.InstructionSet:
    return instructions.InstructionSet(
        name, [InstructionSample(f"p{i}", "s", "t", "f", "passed", "x") for i in range(n)]
    )


def test_arms_keep_their_asked_sizes_and_stop_on_a_shortfall():
    sets = [_set("scoder", 600), _set("teacher_only", 750)]
    sized, sizes = instructions.size_arms(
        sets, {"scoder": 600, "teacher_only": 750}, equalize=False, tolerance=0.0, seed=0
    )
    assert [len(s.rows) for s in sized] == [600, 750] and [z.got for z in sizes] == [600, 750]
    with pytest.raises(instructions.ArmShortfall, match=r"arm 'scoder': asked 700, available 600"):
        instructions.size_arms(sets, {"scoder": 700, "teacher_only": 750}, equalize=False, tolerance=0.1, seed=0)
    ok, _ = instructions.size_arms(sets, {"scoder": 650, "teacher_only": 750}, equalize=False, tolerance=0.1, seed=0)
    assert len(ok[0].rows) == 600  # within tolerance: all it has
    equal, _ = instructions.size_arms(sets, {"scoder": None, "teacher_only": None}, equalize=True, tolerance=0, seed=0)
    assert [len(s.rows) for s in equal] == [600, 600]


def test_paper_asks_for_the_papers_comparison():
    cfg = load_config("paper")
    asked = {a.name: a.n or cfg.final.n_train for a in cfg.final.arms}
    assert asked["scoder"] == 60_000 and asked["teacher_only"] == 75_000 and not cfg.final.equalize
    assert cfg.seed_stage.teacher.dataset is not None  # the 75K teacher set comes from a named dataset


# ----------------------------------------------------------------------------- teacher data reaches every consumer
def _bought_run(tmp_path, monkeypatch, smoke_cfg) -> tuple[Run, list[SeedSample]]:
    monkeypatch.setenv("SCODER_OUTPUTS", str(tmp_path))
    run = Run("r", "smoke", smoke_cfg)
    bought = [
        SeedSample(
            f"api-{i}",
            "train",
            f"def g{i}(): ...",
            f"Return {i}.",
            f"def g{i}():\n    return {i}",
            f"assert g{i}() == {i}",
            f"g{i}",
            "v1",
        )
        for i in range(3)
    ]
    folder = run.stage_dir("02_seed")
    write_records(folder / teacher.BOUGHT, bought)
    write_json(
        folder / teacher.USAGE,
        {
            "prompt_tokens": 900,
            "completion_tokens": 300,
            "cost_usd": 0.42,
            "requests": 4,
            "requested": 4,
            "model": "gpt-teacher",
        },
    )
    return run, bought


def test_a_teacher_dataset_loses_its_copies_of_held_out_problems(tmp_path, monkeypatch):
    """A profile whose teacher dataset is its own seed file, held-out split included: the teacher arm
    must not train a student on the problems the students are evaluated on."""
    monkeypatch.setenv("SCODER_OUTPUTS", str(tmp_path / "outputs"))
    seeds = "data/seed/seed_compact_v2.jsonl"
    profile = tmp_path / "dataset.yaml"
    profile.write_text(
        f"inherit: smoke\nseed_stage:\n  teacher:\n    seed_file: {seeds}\n"
        f"    dataset: {{path: {seeds}, dataset: null}}\n",
        encoding="utf-8",
    )
    run = Run.for_profile(str(profile), "dataset")
    data = teacher.load(run)
    rows = arms.teacher_rows(run)
    held = {r.problem for r in data.seeds.heldout}
    assert len(held) >= 80 and not held & {r.problem for r in rows}
    assert len(rows) == 2 * len(data.seeds.train)  # the committed split, and the dataset's training rows
    # a copy with its names changed is caught too; an unrelated row stays
    one = data.seeds.heldout[0]
    renamed = one.solution.replace(one.entry_point, "renamed_entry")
    copy = InstructionSample(one.problem.replace(one.entry_point, "renamed_entry"), renamed, "", "", "external", "")
    other = InstructionSample("Return the sum of a list.", "def total(xs):\n    return sum(xs)", "", "", "external", "")
    kept = teacher.without_heldout([copy, other], data.seeds.heldout, run.cfg.preprocess.decontam)
    assert kept == [other]


def test_bought_teacher_samples_reach_fit_targets_arm_and_costs(tmp_path, monkeypatch, smoke_cfg):
    run, bought = _bought_run(tmp_path, monkeypatch, smoke_cfg)
    data = teacher.load(run)
    ids = {r.id for r in bought}
    assert ids <= {r.id for r in data.train}  # influence targets and the enhanced synthesizer's data
    assert ids <= {r.id for r in data.fit_rows(len(data.train), seed=0)}  # the weight fit can draw them
    assert {r.problem for r in bought} <= {r.problem for r in arms.teacher_rows(run)}  # the teacher arm
    rows = costs.synthesis_costs(run, n_final=10, final_synthesis_s=5.0)["rows"]
    bought_row = next(r for r in rows if "bought" in r["item"])
    assert bought_row["usd"] == 0.42 and bought_row["samples"] == 3
    committed = next(r for r in rows if "committed" in r["item"])
    assert committed["samples"] == len(data.seeds.train)  # held-out rows are not priced as training data
    assert rows[-1]["final_synthesis_s"] == 5.0


# ----------------------------------------------------------------------------- ablations keep the data amount
def _cands(n_snippets: int = 10, per: int = 4) -> list[Candidate]:
    rng = np.random.default_rng(0)
    return [
        Candidate(
            "p",
            "s",
            "t",
            "f",
            1,
            "passed",
            cand_id=f"k{k}-{j}",
            snippet_key=f"k{k}",
            eligible=j != 3,
            score=float(rng.uniform(0, 9)),
        )
        for k in range(n_snippets)
        for j in range(per)
    ]


def test_no_scoring_keeps_the_same_count_with_a_random_candidate_per_snippet():
    cands = _cands()
    full = selection.select_per_snippet(cands, 0.5, scoring=True, seed=0)
    ablated = selection.select_per_snippet(cands, 0.5, scoring=False, seed=0)
    assert len(ablated) == len(full) == 5 and len({c.snippet_key for c in ablated}) == 5
    picks = [c.cand_id.split("-")[1] for c in selection.random_per_snippet(cands, 1.0, seed=1)]
    assert len(set(picks)) > 1  # not always the first candidate (checkpoint 0, sample 0)
    assert all(c.eligible for c in ablated)


@pytest.mark.parametrize("select", ["influence", "random", "score"])
def test_no_influence_keeps_the_same_count(select):
    cands = _cands(8, 1)
    kept = selection.keep(cands, np.linspace(0, 1, 8), keep_fraction=0.25, select=select, seed=0)
    assert len(kept) == 2
    if select == "score":
        assert [c.score for c in kept] == sorted((c.score for c in cands), reverse=True)[:2]
    if select == "influence":
        assert [c.cand_id for c in kept] == ["k7-0", "k6-0"]


def test_paper_ablations_each_change_one_thing_and_keep_the_counts():
    main = load_config("paper")
    m_main = main.iterate.checkpoints or main.influence.train.num_checkpoints
    for name, changed in [
        ("paper_ablation_m1", "iterate"),
        ("paper_ablation_noscore", "iterate"),
        ("paper_ablation_noinfluence", "influence"),
        ("paper_ablation_noinfluence_score", "influence"),
    ]:
        abl = load_config(name)
        m = abl.iterate.checkpoints or abl.influence.train.num_checkpoints
        assert m * abl.iterate.samples_per_checkpoint == m_main * main.iterate.samples_per_checkpoint, name
        assert abl.iterate.keep_top_fraction == main.iterate.keep_top_fraction, name
        assert abl.influence.keep_fraction == main.influence.keep_fraction, name
        for section in ("synthesizer", "seed_stage", "preprocess", "evaluate"):
            assert getattr(abl, section) == getattr(main, section), (name, section)
        other = "influence" if changed == "iterate" else "iterate"
        assert getattr(abl, other) == getattr(main, other), (name, other)


# ----------------------------------------------------------------------------- independent checkpoints
def test_two_checkpoints_draw_different_samples_for_the_same_snippet(micro_checkpoints, smoke_cfg, tmp_path):
    cfg = smoke_cfg.model_copy(
        update={
            "iterate": smoke_cfg.iterate.model_copy(
                update={
                    "samples_per_checkpoint": 2,
                    "sampling": Sampling(temperature=1.0, top_p=1.0, max_new_tokens=24),
                }
            )
        }
    )
    same = str(micro_checkpoints[-1])  # one model twice: only the seeds can make the samples differ
    cands = candidates.sample(cfg, [same, same], ["def f(x):\n    return x\n"], iteration=1, cache_dir=tmp_path)
    by_ckpt = {m: [c.raw for c in cands if c.checkpoint == m] for m in (0, 1)}
    assert by_ckpt[0] != by_ckpt[1]
    assert candidates.request_seed(0, 1, 0, "k") != candidates.request_seed(0, 1, 1, "k")


# ----------------------------------------------------------------------------- an honest weight fit
def test_a_constant_or_near_constant_aspect_gets_weight_zero():
    rng = np.random.default_rng(3)
    n = 80
    signal = np.r_[rng.normal(6, 1, n), rng.normal(4, 1, n)]
    near_constant = 5 + rng.normal(0, 0.01, 2 * n)
    x = np.c_[signal, np.full(2 * n, 7.0), near_constant]
    y = np.r_[np.ones(n), np.zeros(n)]
    w = weights.fit_weights(x, y)
    assert w[1] == 0 and w[2] == 0 and w[0] == pytest.approx(1.0)
    fit = weights.fit_aspect_weights(x[:n], x[n:], ["a", "const", "flat"], AspectWeights(bootstrap=10), seed=0)
    assert fit.dropped == ["const", "flat"]


def test_cross_validated_auc_is_out_of_sample():
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 9, size=(40, 5))  # no real signal: in-sample AUC flatters, out-of-sample does not
    y = np.r_[np.ones(20), np.zeros(20)]
    opts = AspectWeights(bootstrap=5, cv_guard=False)  # the guard would replace this noise fit by equal weights
    fit = weights.fit_aspect_weights(x[:20], x[20:], list("abcde"), opts, seed=0)
    assert fit.auc != fit.auc_cv and fit.auc > fit.auc_cv
    assert weights.cv_auc(x, y, folds=5) == fit.auc_cv


# ----------------------------------------------------------------------------- paired statistics
def test_paired_delta_and_mcnemar():
    a = [False] * 90 + [True] * 10
    b = [False] * 80 + [True] * 20
    d = paired_delta(a, b, seed=0)
    assert d["delta"] == pytest.approx(0.10) and d["only_b"] == 10 and d["only_a"] == 0
    assert 0 < d["ci_low"] < d["delta"] < d["ci_high"] and d["p_value"] == pytest.approx(mcnemar_p(0, 10))
    same = paired_delta(a, a)
    assert (
        same["delta"] == 0
        and same["p_value"] == 1.0
        and claims.verdict(same["ci_low"], same["ci_high"]) == claims.NOT_RESOLVED
    )
    with pytest.raises(ValueError):
        paired_delta([True], [True, False])
    assert claims.verdict(d["ci_low"], d["ci_high"], d["p_value"]) == "supported"


def test_a_verdict_needs_the_exact_test_to_agree_with_the_interval():
    """8 discordant pairs, 7 one way: the percentile bootstrap clears zero, McNemar's exact p does not
    reach 0.05 (0.07): not resolved; three times the pairs resolve it."""
    a = [True] * 7 + [False] * 1 + [False] * 72
    b = [False] * 7 + [True] * 1 + [False] * 72
    d = paired_delta(a, b, seed=0)
    assert d["ci_high"] < 0 and 0.05 < d["p_value"] < 0.1
    assert claims.verdict(d["ci_low"], d["ci_high"]) == "contradicted"  # the interval alone
    assert claims.verdict(d["ci_low"], d["ci_high"], d["p_value"]) == claims.NOT_RESOLVED
    big = paired_delta(a * 3, b * 3, seed=0)
    assert claims.verdict(big["ci_low"], big["ci_high"], big["p_value"]) == "contradicted"


def test_samples_of_one_snippet_count_as_one_witness():
    """Two samples a snippet, moving together: 5 snippets won both times are 10 discordant samples to
    McNemar (p 0.002) but 5 clusters to the sign-flip test (p 1/16): not resolved, as 5 snippets are not."""
    a, b = [False] * 40, [True] * 10 + [False] * 30
    snippets = [f"s{i // 2}" for i in range(40)]
    clustered, flat = paired_delta(a, b, snippets, seed=0), paired_delta(a, b, seed=0)
    assert flat["p_value"] == pytest.approx(mcnemar_p(0, 10)) and flat["p_value"] < 0.01
    assert clustered["p_value"] == pytest.approx(2 / 2**5)
    assert claims.verdict(clustered["ci_low"], clustered["ci_high"], clustered["p_value"]) == claims.NOT_RESOLVED
    # the exact sign-flip test is McNemar's on 0/1 differences, for any split of the discordant pairs
    for only_a, only_b in [(0, 3), (2, 9), (4, 4), (1, 12)]:
        assert sign_flip_p([1.0] * only_b + [-1.0] * only_a) == pytest.approx(mcnemar_p(only_a, only_b))


def test_shares_of_tests_passed_are_compared_pair_by_pair():
    """Shares in [0, 1] (the held-out tests): the sign-flip p is McNemar's on 0/1 scores, and a shift that
    no answer turns into a whole solved problem is still measured, with its interval over problems."""
    binary_a, binary_b = [1.0] * 3 + [0.0] * 77, [0.0] * 3 + [1.0] * 12 + [0.0] * 65
    d = paired_delta(binary_a, binary_b, seed=0)
    assert d["p_value"] == pytest.approx(mcnemar_p(3, 12), abs=0.01)
    assert sign_flip_p([0.0] * 10) == 1.0
    rng = np.random.default_rng(0)
    a = rng.choice([0.0, 1 / 3, 2 / 3], size=93, p=[0.8, 0.15, 0.05])
    b = np.minimum(a + rng.choice([0.0, 1 / 3], size=93, p=[0.6, 0.4]), 1.0)  # b passes more asserts
    d = paired_delta(a, b, seed=0)
    assert d["delta"] == pytest.approx(float((b - a).mean())) and 0 < d["ci_low"] < d["delta"] < d["ci_high"]
    assert d["p_value"] < 0.001 and d["only_a"] == 0 and d["only_b"] == int((b > a).sum())
    assert claims.verdict(d["ci_low"], d["ci_high"], d["p_value"]) == "supported"
    assert paired_delta(a, a)["p_value"] == 1.0
    # through the table: rows carry tests passed of total; a task without an answer scores 0
    ids = ["h0", "h1", "h2"]
    base = [EvalResult("h0", "s", False, False, "failed", "", "failed", tests_passed=1, tests_total=3)]
    arm = [
        EvalResult("h0", "s", False, False, "failed", "", "failed", tests_passed=2, tests_total=3),
        EvalResult("h1", "s", False, True, "passed", "", "passed", tests_passed=4, tests_total=4),
    ]
    results = {"base": {HELDOUT_TESTS: base}, "scoder": {HELDOUT_TESTS: arm}}
    (row,) = paired_table(results, [("base", "scoder")], {HELDOUT_TESTS: ids}, seed=0).to_dict("records")
    assert row["pass1_a"] == pytest.approx(100 / 9) and row["pass1_b"] == pytest.approx(100 * (2 / 3 + 1) / 3)
    assert row["only_b"] == 2 and row["only_a"] == 0


def test_tasks_without_answers_count_as_failures():
    rows = [EvalResult(f"t{i}", "s", False, True, "passed", "", "passed") for i in range(3)]
    assert summarize("humaneval", rows, (1,), n_tasks=6)["base"]["pass@1"] == pytest.approx(0.5)


def test_more_than_one_answer_per_task_is_refused_not_summed():
    """The headline sums verdicts over rows and the paired tests keep one verdict per task: several
    samples of a task would inflate the one and silently drop all but the last in the other."""
    one = EvalResult("t0", "s", False, True, "passed", "", "passed", tests_passed=1, tests_total=1)
    rows = [one, dataclasses.replace(one, passed=False), EvalResult("t1", "s", False, True, "passed", "", "passed")]
    for score in (
        lambda: headline("humaneval", rows, 2),
        lambda: asserts_passed_headline(rows, ["t0", "t1"]),
        lambda: paired_table({"base": {"mbpp": rows}, "x": {"mbpp": rows[1:]}}, [("base", "x")], {"mbpp": ["t0"]}, 0),
    ):
        with pytest.raises(ValueError, match=r"2 answers for task 't0'.*greedy.*n=1"):
            score()
    assert headline("humaneval", rows[1:], 2)["pass@1"] == 0.5


# ----------------------------------------------------------------------------- one student format
def test_students_train_on_the_prompt_they_are_evaluated_with(micro_ref):
    _, tok = load(micro_ref)
    task = Task("humaneval", "X/0", 'def add(a, b):\n    """Add."""\n', "add", "    return a + b\n", "")
    example = instructions.student_example(task.prompt, "def add(a, b):\n    return a + b", "evalplus")
    row = encode(tok, example, 512)
    prompt_len = row["labels"].count(-100)
    trained_prompt = tok.decode(row["input_ids"][:prompt_len])
    eval_ids = prompt_ids(tok, GenRequest.chat(build_prompt(task, "chat"), Sampling()))
    evaluated = tok.decode(eval_ids)
    assert evaluated.startswith(trained_prompt)  # same user turn, then the prefix the student learned
    assert evaluated[len(trained_prompt) :] == student_format.response_prefix()
    assert tok.decode(row["input_ids"][prompt_len:]).startswith(student_format.RESPONSE_PREFIX)


# ----------------------------------------------------------------------------- the plan shows what is asked
def test_plan_describes_every_arm_and_ablation(tmp_path, monkeypatch):
    monkeypatch.setenv("SCODER_OUTPUTS", str(tmp_path))
    text = describe_arms(Run("paper", "paper", load_config("paper")))
    assert "scoder" in text and "60000" in text and "teacher_only" in text and "75000" in text
    assert "no_influence" in text and "paper-noinfluence" in text and "kept at random" in text


def test_claims_from_stage_metrics_carry_the_yardstick_size():
    """02 writes the yardstick's size as heldout_yardstick, 04 as heldout_n: both reach the claim's n."""
    m2 = {"heldout_yardstick": 80, "x_delta": 0.5, "x_ci_low": 0.4, "x_ci_high": 0.6, "x_p_value": 0.001}
    m4 = {"heldout_n": 80.0, "x_delta": -0.1, "x_ci_low": -0.2, "x_ci_high": -0.01, "x_p_value": 0.08}
    rows = [claims._row("c", "e", claims._metric_delta(m, "x", per_snippet=2)) for m in (m2, m4)]
    assert [r["n"] for r in rows] == ["40 snippets x 2", "40 snippets x 2"]  # snippets are the paired units
    assert [claims.verdict(*r["_interval"], r["p"]) for r in rows] == ["supported", claims.NOT_RESOLVED]


def test_the_report_shows_influence_in_significant_digits_not_rounded_to_zero():
    """Influence is a learning-rate-weighted cosine (~1e-5): rounded to 3 decimals every iteration read 0.000."""
    curves = pd.DataFrame(
        {
            "heldout_valid_rate": [0.0626, 0.0126],
            "influence_mean": [3.886e-5, -3.2e-5],
            "influence_std": [6.24e-6, None],
        },
        index=pd.Index([1, 2], name="synthesizer"),
    )
    shown = study.readable(curves)
    assert list(shown.influence_mean) == ["3.89e-05", "-3.2e-05"] and list(shown.influence_std) == ["6.24e-06", ""]
    assert list(shown.heldout_valid_rate) == [0.063, 0.013]
