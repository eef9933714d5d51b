"""The bill before the run: its counts follow the config, its lengths the tokenizer, and it loads no model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from transformers import AutoTokenizer

from scoder_lib.core.config import REPO_ROOT, ConfigError, LoraOptions
from scoder_lib.core.params import load_config
from scoder_lib.core.records import Candidate
from scoder_lib.evaluation import evaluate
from scoder_lib.method import scoring, seed, selection, synthesis
from scoder_lib.method.train import encode, save_points
from scoder_lib.pipeline.bill import lengths, models
from scoder_lib.pipeline.bill.build import Bill, make_bill
from scoder_lib.pipeline.bill.lengths import fit, seed_lengths
from scoder_lib.pipeline.bill.render import render, to_json
from scoder_lib.pipeline.bill.work import Work, keep_count, save_points_count, top_count

SMOL = REPO_ROOT / ".cache" / "scoder" / "models" / "smollm2-135m-instruct"


def bill_of(tmp_path: Path, base: str, overrides: dict, name: str = "p", **kw) -> Bill:
    """The bill of `base` with `overrides` deep-merged (through a real `inherit:` params file)."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"inherit": base, **overrides}), encoding="utf-8")
    return make_bill(load_config(str(path)), str(path), name, **kw)


def item(bill: Bill, stage: str, starts: str) -> Work:
    found = [w for w in bill.works if w.stage == stage and w.item.startswith(starts)]
    assert len(found) == 1, [w.item for w in bill.works if w.stage == stage]
    return found[0]


# ----------------------------------------------------------------------------- counts follow the config
def test_doubling_k_doubles_candidate_generations_and_ratings(tmp_path):
    one = bill_of(tmp_path, "smoke", {"iterate": {"snippets_per_iteration": 4}}, "k4")
    two = bill_of(tmp_path, "smoke", {"iterate": {"snippets_per_iteration": 8}}, "k8")
    for stage in ("03_sample_score@1", "03_sample_score@2"):
        a, b = item(one, stage, "candidates:"), item(two, stage, "candidates:")
        assert b.sequences == 2 * a.sequences and b.generated_tokens == pytest.approx(2 * a.generated_tokens)
        ra, rb = item(one, stage, "ratings of"), item(two, stage, "ratings of")
        assert rb.ratings == 2 * ra.ratings > 0
        assert rb.forward_tokens == pytest.approx(2 * ra.forward_tokens)


def test_one_checkpoint_times_eight_samples_generates_what_four_times_two_does():
    paper = make_bill(load_config("paper"), "paper", "paper", deps=False)
    m1 = make_bill(load_config("paper_ablation_m1"), "paper_ablation_m1", "paper-m1", deps=False)
    a, b = item(paper, "03_sample_score@1", "candidates:"), item(m1, "03_sample_score@1", "candidates:")
    assert a.sequences == b.sequences == 20000 * 8
    assert a.generated_tokens == pytest.approx(b.generated_tokens)
    assert (a.prompts, b.prompts) == (4 * 20000, 20000)  # one request per snippet and checkpoint
    # ... and influence still sums over all four checkpoints: the ablation changes sampling only
    ga, gb = item(paper, "04_influence@1", "influence:"), item(m1, "04_influence@1", "influence:")
    assert ga.grad_passes == gb.grad_passes and "x 4 ckpts" in gb.item


def test_a_synthesizer_with_one_checkpoint_is_sampled_once(tmp_path):
    """The first tiny profile (K = 3, N = 2, long v1 samples): synthesizer 1 trained one step on its one
    kept sample, so iteration 2 sampled 1 checkpoint (as that measured run reported: 12 candidates in
    iteration 1, 6 in iteration 2)."""
    old = {
        "seed_stage": {
            "teacher": {"seed_file": "data/seed/seed_v1.jsonl"},
            "prompt_version": "v1",
            "train": {"epochs": 2, "max_seq_len": 1024},
        },
        "iterate": {"snippets_per_iteration": 3, "samples_per_checkpoint": 2, "keep_top_fraction": 0.5},
        "influence": {"max_target_samples": 8, "control": [], "train": {"epochs": 2}},
    }
    # The yields that run measured on the long task (1 of 12 parsed), not today's compact-task ones.
    tiny = bill_of(tmp_path, "tiny", old, "old", assume=["parsed_rate_small=0.12", "passed_rate_small=0.02"])
    assert item(tiny, "03_sample_score@1", "candidates:").sequences == 3 * 2 * 2
    assert item(tiny, "04_influence@1", "synthesizer 1").checkpoints == 1
    assert item(tiny, "03_sample_score@2", "candidates:").sequences == 3 * 1 * 2
    assert item(tiny, "04_influence@2", "influence:").grad_passes == (1 + 8) * 1
    # today's tiny: 96 candidates a round from 2 checkpoints, both rounds
    now = make_bill(load_config("tiny"), "tiny", "tiny")
    assert item(now, "03_sample_score@1", "candidates:").sequences == 96
    assert item(now, "03_sample_score@2", "candidates:").sequences == 96


def test_weight_fit_is_billed_once_and_not_without_scoring(tmp_path):
    fitted = bill_of(tmp_path, "tiny", {}, "fit")
    # the teacher's samples are rated once (cached after); the fit against the candidates runs every iteration
    assert [w.stage for w in fitted.works if w.item.startswith("weight fit: rate")] == ["03_sample_score@1"]
    assert [w.stage for w in fitted.works if w.item.startswith("weight fit:") and w.kind == "host"] == [
        "03_sample_score@1",
        "03_sample_score@2",
    ]
    assert not [w for w in fitted.works if "base synthesizer" in w.item and w.stage.startswith("03")]
    none = bill_of(tmp_path, "tiny", {"iterate": {"weights": {"mode": "none"}}}, "none")
    assert not [w for w in none.works if w.kind == "rate"]


def test_asked_sizes_and_equalize_change_student_tokens(tmp_path):
    # Every arm trains on all it has: 40 final snippets give the method arm a few dozen, the teacher has 375.
    loose = {"n_train": None, "equalize": False, "snippets": 40}
    free = bill_of(tmp_path, "tiny", {"final": loose}, "free")
    teacher = item(free, "05_final", "student: teacher_only")
    assert teacher.examples > 10 * item(free, "05_final", "student: scoder").examples
    asked = bill_of(tmp_path, "tiny", {"final": {**loose, "n_train": 20}}, "asked")
    assert item(asked, "05_final", "student: teacher_only").trained_tokens < teacher.trained_tokens / 3
    equal = bill_of(tmp_path, "tiny", {"final": {**loose, "equalize": True}}, "equal")
    got = {z.name: z.got for z in equal.arms}
    assert len(set(got.values())) == 1
    assert item(equal, "05_final", "student: teacher_only").trained_tokens < teacher.trained_tokens / 10


def test_training_data_modes_change_what_the_next_synthesizer_trains_on(tmp_path):
    kept = bill_of(tmp_path, "tiny", {}, "kept")
    seed = bill_of(tmp_path, "tiny", {"influence": {"train_data": "kept+seed"}}, "seed")
    acc = bill_of(tmp_path, "tiny", {"influence": {"train_data": "accumulated"}}, "acc")
    n = {b.run: item(b, "04_influence@2", "synthesizer 2").examples for b in (kept, seed, acc)}
    k1, k2 = (item(kept, f"04_influence@{t}", f"synthesizer {t}").examples for t in (1, 2))
    assert n["acc"] == pytest.approx(k1 + k2) and n["kept"] == pytest.approx(k2) and k2 > 0
    assert n["seed"] > n["kept"] + 40  # tiny's 160 teacher samples, of which about a third fit 1,024 tokens


# ----------------------------------------------------------------------------- dollars
def test_no_teacher_purchase_costs_nothing(tmp_path):
    bill = bill_of(tmp_path, "paper", {"seed_stage": {"teacher": {"n_new": 0}}}, "nonew", deps=False)
    assert bill.teacher_usd == 0.0 and not [w for w in bill.works if w.kind == "api"]
    assert make_bill(load_config("tiny"), "tiny", "tiny").teacher_usd == 0.0  # the committed file teacher


def test_a_priced_teacher_costs_tokens_times_prices(tmp_path):
    def usd(n: int, p_in: float, p_out: float, name: str) -> tuple[float, Work]:
        prices = {"price_per_1m_input_usd": p_in, "price_per_1m_output_usd": p_out}
        over = {"seed_stage": {"teacher": {"n_new": n, "model": {"name": "gpt-4o", "openai": prices}}}}
        bill = bill_of(tmp_path, "paper", over, name, deps=False)
        return bill.teacher_usd, next(w for w in bill.works if w.kind == "api")

    both, buy = usd(1000, 2.5, 10.0, "both")
    assert both == pytest.approx((buy.prompt_tokens * 2.5 + buy.generated_tokens * 10.0) / 1e6)
    assert usd(500, 2.5, 10.0, "half")[0] == pytest.approx(both / 2)
    assert usd(1000, 2.5, 0.0, "in")[0] + usd(1000, 0.0, 10.0, "out")[0] == pytest.approx(both)
    # GPT-4o list prices, ~300 prompt and ~800 completion tokens a request: about a cent each
    assert 0.005 < both / 1000 < 0.02


# ----------------------------------------------------------------------------- the paper bill
def test_paper_bill_is_in_a_plausible_range():
    """Compute-bound parts against hand arithmetic on the H100 (989 TFLOPS bf16, vLLM 8.1k tokens/s at 8B):
    per iteration 20,000 x 8 candidates of ~800 tokens (130M tokens: 4-9 GPU-h); a 6.7B full SFT of
    60K-75K samples x 2 epochs (1-10 GPU-h each); disk 0.1-3 TB (synthesizer checkpoints with moments)."""
    bill = make_bill(load_config("paper"), "paper", "paper")
    cand = item(bill, "03_sample_score@1", "candidates:")
    assert 1e8 < cand.generated_tokens < 2e8 and 3 < cand.gpu_s / 3600 < 12
    students = [w for w in bill.works if w.item.startswith("student:")]
    assert len(students) == 8 and all(1 < w.gpu_s / 3600 < 10 for w in students)
    # synthesizer checkpoints with moments, students without (save_moments: false): a few hundred GB
    assert 0.1e12 < bill.total("disk_bytes") < 3e12
    assert 5 < bill.teacher_usd < 20
    # influence costs about a float32 pass over the selected candidates (~11K x 4 checkpoints of ~1-2K
    # tokens through 7B: 3-40 GPU-h); the sparse projection is a rounding error of it
    grads = item(bill, "04_influence@1", "influence:")
    assert 3 < grads.gpu_s / 3600 < 40 and grads.note.startswith("0% ")
    # ... where LESS's dense projection, its blocks made on the host for every shard, would dominate
    cfg = load_config("paper")
    dense_cfg = cfg.model_copy(update={"influence": cfg.influence.model_copy(update={"projection": "rademacher"})})
    dense = item(make_bill(dense_cfg, "paper", "paper", deps=False), "04_influence@1", "influence:")
    assert dense.gpu_s > 20 * grads.gpu_s and int(dense.note.split("%")[0]) > 90
    assert {d["profile"] for d in bill.dependencies} == {
        "paper_ablation_m1",
        "paper_ablation_noscore",
        "paper_ablation_noinfluence",
        "paper_ablation_noinfluence_score",
    }


def test_a100_is_slower_and_h200_generates_faster():
    cfg = load_config("paper")
    h100, a100, h200 = (make_bill(cfg, "paper", "paper", gpu=g, deps=False) for g in ("H100", "A100", "H200"))
    c = [item(b, "03_sample_score@1", "candidates:").gpu_s for b in (h100, a100, h200)]
    assert c[1] > 1.8 * c[0] and c[2] < c[0]
    with pytest.raises(ValueError, match="unknown GPU"):
        make_bill(cfg, "paper", "paper", gpu="V100")


def test_tiny_has_a_cpu_estimate_and_paper_does_not():
    tiny = make_bill(load_config("tiny"), "tiny", "tiny")
    assert tiny.cpu_sized and "CPU-min" in render(tiny)
    assert 20 * 60 < tiny.total("cpu_s") < 5 * 3600
    paper = make_bill(load_config("paper"), "paper", "paper", deps=False)
    assert not paper.cpu_sized and "CPU-min" not in render(paper)


def test_assumptions_can_be_overridden_and_typos_fail():
    cfg = load_config("paper")
    sure = make_bill(cfg, "paper", "paper", assume=["passed_rate_large=0.9"], deps=False)
    assert not [w for w in sure.warnings if "fall short" in w]
    doubtful = make_bill(cfg, "paper", "paper", assume=["passed_rate_large=0.3"], deps=False)
    assert [w for w in doubtful.warnings if "fall short" in w]
    with pytest.raises(ConfigError, match="passed_rate_large"):
        make_bill(cfg, "paper", "paper", assume=["passed_rate_larg=0.9"], deps=False)


# ----------------------------------------------------------------------------- restated rules agree
def test_held_out_problems_are_billed_for_every_one_and_every_assert(tmp_path):
    """06 answers every held-out problem (not only the synthesizers' yardstick) and judges each answer once
    per teacher assert."""
    s = seed.load(REPO_ROOT / "data" / "seed" / "seed_compact_v2.jsonl")
    asserts = sum(len(evaluate.each_assert(r.tests)) for r in s.heldout)
    on = bill_of(tmp_path, "tiny", {}, name="on")
    off = bill_of(tmp_path, "tiny", {"evaluate": {"heldout_problems": False}}, name="off")
    prompts = [[w for w in b.works if w.stage == "06_evaluate" and w.kind == "generate" and w.item.startswith("base:")]
               for b in (on, off)]  # fmt: skip
    assert prompts[0][0].sequences - prompts[1][0].sequences == len(s.heldout) > 80
    judged = item(on, "06_evaluate", "base: judge").programs - item(off, "06_evaluate", "base: judge").programs
    assert judged == pytest.approx(asserts, abs=1) and asserts > 3 * len(s.heldout)


def test_restated_counting_rules_agree_with_the_library():
    for total in range(1, 40):
        for m in range(1, 6):
            assert save_points_count(total, m) == len(save_points(total, m))
    for n in range(0, 30):
        for f in (0.05, 0.25, 0.5, 0.9):
            for available in {0, n // 2, n}:
                assert keep_count(n, available, f) == selection.keep_count(n, available, f)
            for with_any in {0, n // 3, n}:
                cands = [
                    Candidate(
                        "p", "s", "t", "f", 1, "passed", cand_id=f"{i}", snippet_key=f"{i}", eligible=i < with_any
                    )
                    for i in range(n)
                ]
                assert top_count(n, with_any, f) == len(selection.best_per_snippet(cands, f))


def test_prompt_texts_match_the_method_modules():
    for version in synthesis.PROMPT_VERSIONS:
        assert lengths.synthesis_template(version) == synthesis.prompt_template(version)
    assert lengths.render("p", "s = 1", "assert s") == synthesis.render("p", "s = 1", "assert s")
    system, questions = scoring.rubric()
    aspects = ["clarity", "difficulty"]
    assert lengths.rubric_chars(aspects) == (len(system), sum(len(questions[a]) for a in aspects))


@pytest.mark.skipif(not SMOL.is_dir(), reason="SmolLM2 not prepared (make model)")
def test_length_model_agrees_with_the_tokenizer():
    """What the bill estimates from characters vs SmolLM2's tokenizer on tiny's seed training."""
    cfg = load_config("tiny")
    tok = AutoTokenizer.from_pretrained(str(SMOL))
    rows = seed.load(cfg.resolve(cfg.seed_stage.teacher.seed_file)).train
    real = [len(encode(tok, seed.to_example(r), 10**6)["input_ids"]) for r in rows]
    est = [r.prompt + r.response for r in seed_lengths(cfg).train]
    assert sum(est) == pytest.approx(sum(real), rel=0.05)
    real_fit = sum(x <= cfg.seed_stage.train.max_seq_len for x in real)
    est_fit = fit([(r.prompt, r.response) for r in seed_lengths(cfg).train], cfg.seed_stage.train).share * len(rows)
    assert abs(est_fit - real_fit) <= 0.1 * real_fit


# ----------------------------------------------------------------------------- the command
def test_dry_run_prints_arms_and_bill_writes_json_and_imports_no_torch(tmp_path):
    out = tmp_path / "bill.json"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "SCODER_OUTPUTS": str(tmp_path / "outputs")}
    code = (
        "import sys, runpy; sys.argv = ['plan', '--profile', 'tiny', '--run', 'tiny', '--dry-run', '--json', "
        f"{str(out)!r}]\n"
        "try:\n    runpy.run_module('scoder_lib.pipeline.plan', run_name='__main__')\nexcept SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'papermill', 'datasets') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout
    assert "Arms of run 'tiny'" in res.stdout and "Bill of run 'tiny'" in res.stdout
    data = json.loads(out.read_text())
    assert [s["stage"] for s in data["stages"]][0] == "01_preprocess" and data["teacher_usd"] == 0
    assert {c["name"] for c in data["assumptions"]} >= {"passed_rate_large", "train_mfu"}
    assert all(c["source"] for c in data["constants"])
    assert not (tmp_path / "outputs").exists()  # the dry run writes nothing into outputs


def test_json_totals_are_the_sums_of_the_items():
    bill = make_bill(load_config("smoke"), "smoke", "smoke")
    data = to_json(bill)
    gpu = sum(i.get("gpu_s", 0.0) for s in data["stages"] for i in s["items"])
    assert data["totals"]["gpu_s"] == pytest.approx(gpu)
    assert data["totals"]["gpu_h"] == pytest.approx(gpu / 3600)


def test_model_sizes_come_from_the_table_a_config_or_the_name(tmp_path):
    qwen = models.model_size("Qwen/Qwen2.5-Coder-7B-Instruct")
    assert qwen.how == "table" and 7.5e9 < qwen.params < 7.7e9  # 7.61B on its model card
    lora = LoraOptions(r=128)  # all seven modules of all 28 layers
    assert qwen.lora_params(lora) == 128 * 28 * (2 * (3584 + 3584) + 2 * (3584 + 512) + 3 * (3584 + 18944))
    assert models.model_size("deepseek-ai/deepseek-coder-6.7b-base").params == pytest.approx(6.74e9, rel=0.01)
    assert models.model_size("smollm2-135m-instruct").params == pytest.approx(134.5e6, rel=0.01)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(
        json.dumps(
            {"num_hidden_layers": 30, "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
             "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True}
        )
    )  # fmt: skip
    assert models.model_size(str(tmp_path / "m")).params == models.model_size("smollm2-135m-instruct").params
    named = models.model_size("someone/Coder-14B")
    assert (named.how, named.params) == ("name", 14e9)
    assert models.model_size("mystery").how == "unknown"


@pytest.mark.slow
def test_the_measuring_script_runs_every_part(tmp_path):
    """`scripts/measure_bill_constants.py --check`: every part it measures still runs against today's
    library (a renamed class once broke its gradients part unnoticed) and yields positive figures."""
    out = tmp_path / "m.json"
    cmd = [sys.executable, "scripts/measure_bill_constants.py", "--check", "--backend", "llamacpp", "--out", str(out)]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    res = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads(out.read_text())
    assert m["tokens"]["chars_per_token"] > 1 and m["sandbox"]["programs_s_wall"] > 0
    assert m["rate"]["s_per_candidate"] > 0 and m["weights"]["step_s_12_rows"] > 0
    assert m["train"]["tok_s"] > 0 and m["gradients"]["tok_s"] > 0
    assert m["gradients"]["projection_block_ns_per_entry"] > 0
    batches = [v for k, v in m["generate"].items() if k.startswith("batch_")]
    assert m["generate"]["backend"] == "llamacpp" and batches and all(b["wall_tok_s"] > 0 for b in batches)
