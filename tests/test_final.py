"""Final synthesis: the instruction set's filters, equal-size arms, and loadable dataset and student."""

from __future__ import annotations

import datasets
import pytest
import transformers

from scoder_lib.core.config import DecontamOptions, LoraOptions, TrainOptions
from scoder_lib.core.records import InstructionSample, Sample
from scoder_lib.data.benchmarks import load_tasks
from scoder_lib.data.decontam import Decontaminator, benchmark_texts
from scoder_lib.method import arms, instructions
from scoder_lib.method.train import sft


def _sample(problem: str, solution: str, status: str = "passed") -> Sample:
    return Sample(problem, solution, "assert True", "f", 1, status)


@pytest.fixture(scope="module")
def humaneval_dc():
    texts = [("humaneval", t.task_id, x) for t in load_tasks("humaneval") for x in benchmark_texts(t)]
    return Decontaminator(texts, DecontamOptions())


def test_instruction_set_catches_a_planted_humaneval_problem(humaneval_dc):
    he = load_tasks("humaneval")[12]
    clean = [
        _sample(
            f"Write `scale{i}(xs, k)` that multiplies each of the {i} numbers in xs by k.",
            f"def scale{i}(xs, k):\n    return [x * k * {i} for x in xs]\n",
        )
        for i in range(5)
    ]
    planted = _sample(he.prompt, he.prompt + he.canonical_solution)
    failing = _sample("Return the answer to everything as a string of digits.", "def f():\n    return 41\n", "failed")
    dup = _sample(clean[0].problem, clean[0].solution)
    out = instructions.build(
        "arm",
        instructions.from_samples(clean + [planted, failing, dup], ["snip"] * 8),
        min_status="passed",
        dedup_threshold=0.7,
        dc=humaneval_dc,
    )
    assert len(out.rows) == 5 and all(r.problem != he.prompt for r in out.rows)
    reasons = sorted(r["reason"].split(":")[0] for r in out.rejects)
    assert reasons == ["contaminated", "duplicate", "status_failed"]
    assert [n for _, n in out.funnel] == [8, 7, 6, 5]


def test_equalized_arms_get_equal_sample_counts():
    sets = [
        instructions.InstructionSet(name, [InstructionSample(str(i), "s", "t", "f", "passed", "x") for i in range(n)])
        for name, n in [("scoder", 7), ("teacher", 30), ("base", 4), ("empty", 0)]
    ]
    asked = dict.fromkeys(["scoder", "teacher", "base", "empty"])
    out, sizes = instructions.size_arms(sets, asked, equalize=True, tolerance=0.0, seed=0)
    assert [len(s.rows) for s in out] == [0, 0, 0, 0]  # an empty arm empties an equalized comparison
    out, _ = instructions.size_arms(
        sets[:3], dict.fromkeys(["scoder", "teacher", "base"]), equalize=True, tolerance=0.0, seed=0
    )
    assert [len(s.rows) for s in out] == [4, 4, 4]
    again, _ = instructions.size_arms(
        sets[:3], dict.fromkeys(["scoder", "teacher", "base"]), equalize=True, tolerance=0.0, seed=0
    )
    assert [s.rows for s in again] == [s.rows for s in out]  # seeded


def test_equalized_arms_that_training_would_make_unequal_are_refused(micro_ref, smoke_cfg):
    tok = transformers.AutoTokenizer.from_pretrained(micro_ref.path)
    short = [
        InstructionSample(f"Add {i}.", f"def f(x):\n    return x + {i}\n", "t", "f", "passed", "x") for i in range(4)
    ]
    long = [
        *short[:3],
        InstructionSample("Add.", "def f(x):\n" + "    x += 1\n" * 400 + "    return x\n", "t", "f", "passed", "x"),
    ]
    fin = smoke_cfg.final.model_copy(update={"equalize": True})
    fin = fin.model_copy(update={"train": fin.train.model_copy(update={"long_examples": "drop", "max_seq_len": 256})})
    sets = {
        name: [instructions.student_example(r.problem, r.solution, fin.student_format) for r in rows]
        for name, rows in (("scoder", short), ("teacher_only", long))
    }
    arms.check_equal_training(tok, {"scoder": sets["scoder"]}, fin)  # every sample fits: nothing to say
    with pytest.raises(
        ValueError, match=r"arm teacher_only: 1 of its 4 samples are longer than final.train.max_seq_len=256"
    ):
        arms.check_equal_training(tok, sets, fin)
    truncating = fin.model_copy(update={"train": fin.train.model_copy(update={"long_examples": "truncate"})})
    arms.check_equal_training(tok, sets, truncating)  # truncated, not dropped: the counts stay equal
    arms.check_equal_training(tok, sets, fin.model_copy(update={"equalize": False}))


def test_dataset_and_student_load_with_standard_apis(tmp_path, micro_ref):
    rows = [
        InstructionSample(
            f"Return {i} plus x.", f"def f(x):\n    return x + {i}\n", "assert f(0) == 0", "f", "passed", "s"
        )
        for i in range(6)
    ]
    inst = instructions.InstructionSet("scoder", rows, [("synthesized", 6)])
    folder = instructions.save(
        inst,
        tmp_path / "ds",
        {
            "title": "t",
            "run": "r",
            "arm": "scoder",
            "prompt_version": "v1",
            "synthesizer": "micro",
            "sources": "stdlib",
        },
    )
    ds = datasets.load_dataset("parquet", data_files=str(folder / "train.parquet"), split="train")
    assert ds.num_rows == 6 and ds[0]["problem"] == rows[0].problem
    assert "Samples: 6" in (folder / "README.md").read_text()

    ref = micro_ref
    examples = [instructions.student_example(r.problem, r.solution) for r in rows]
    res = sft(
        examples,
        ref.path,
        tmp_path / "student",
        TrainOptions(epochs=1, batch_size=2, num_checkpoints=1, max_seq_len=128, lora=LoraOptions(r=4)),
        ref.fingerprint,
    )
    model = transformers.AutoModelForCausalLM.from_pretrained(str(res.final))
    assert model.config.num_hidden_layers == 2
