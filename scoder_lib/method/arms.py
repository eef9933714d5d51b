"""The data arms of the final comparison: what feeds each student, at the size the profile asks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import transformers
from transformers import PreTrainedTokenizerBase

from scoder_lib.core.config import ArmOptions, FinalOptions
from scoder_lib.core.logs import get_logger
from scoder_lib.core.records import InstructionSample, Sample
from scoder_lib.core.run import Run
from scoder_lib.data.decontam import Decontaminator
from scoder_lib.llm.generator import generator
from scoder_lib.llm.models import prepare
from scoder_lib.method import lineage, synthesis, teacher
from scoder_lib.method.arm_specs import asked_size, describe
from scoder_lib.method.instructions import (
    MODEL_CARD,
    ArmSize,
    InstructionSet,
    build,
    format_note,
    from_samples,
    size_arms,
    student_example,
)
from scoder_lib.method.seed import as_sample
from scoder_lib.method.train import Example, sft

log = get_logger(__name__)


def synthesizer_for(run: Run, arm: ArmOptions) -> str | None:
    """The checkpoint an arm synthesizes with; None for the base model (and the teacher arm)."""
    if arm.data in ("base", "teacher"):
        return None
    if arm.data == "enhanced":
        return lineage.load_synthesizer(run.upstream("02_seed")).final
    return lineage.final_synthesizer(run if arm.data == "method" else Run.open(arm.run or "")).final


def teacher_rows(run: Run) -> list[InstructionSample]:
    """The teacher arm's rows: the run's teacher training data (committed + bought), then a dataset if any
    (less its rows that copy a held-out problem: `teacher.without_heldout`).

    Why no sandbox run for the seed samples: stage 02 ran every one against its own tests (and stops if
    one fails), and bought samples were kept only when they passed.
    """
    data = teacher.load(run)
    samples = [as_sample(r) for r in data.train]
    for s in samples:
        s.status = "passed"
    rows = from_samples(samples, [r.snippet for r in data.train])
    t = run.cfg.seed_stage.teacher
    if t.dataset is None:
        return rows
    extra = teacher.dataset_samples(t.dataset, run.cfg)
    return rows + teacher.without_heldout(extra, data.seeds.heldout, run.cfg.preprocess.decontam)


def synthesize_arm(run: Run, arm: ArmOptions, snippets: list[str]) -> list[Sample]:
    """A synthesizing arm's raw samples: one per snippet, verified in the sandbox."""
    cfg, fin = run.cfg, run.cfg.final
    gen = generator(cfg.synthesizer, run.cache_dir, model_path=synthesizer_for(run, arm))
    outs = synthesis.synthesize(
        gen,
        snippets,
        fin.sampling,
        version=cfg.seed_stage.prompt_version,
        execution=cfg.execution,
        cache_dir=run.cache_dir,
        desc=f"final synthesis: {arm.name}",
    )
    return [o[0] for o in outs]


def build_arms(
    run: Run, snippets: list[str], dc: Decontaminator
) -> tuple[list[InstructionSet], dict[str, dict[str, float]]]:
    """Every enabled arm's filtered instruction set, and each synthesizing arm's raw synthesis summary."""
    fin = run.cfg.final
    sets, raw = [], {}
    for arm in (a for a in fin.arms if a.enabled):
        if arm.data == "teacher":
            rows = teacher_rows(run)
        else:
            start = time.monotonic()
            samples = synthesize_arm(run, arm, snippets)
            raw[arm.name] = synthesis.summarize(samples) | {"synth_wall_s": time.monotonic() - start}
            rows = from_samples(samples, snippets)
        sets.append(build(arm.name, rows, min_status=fin.min_status, dedup_threshold=fin.dedup_threshold, dc=dc))
    return sets, raw


def sizes(run: Run, sets: list[InstructionSet]) -> tuple[list[InstructionSet], list[ArmSize]]:
    """Every arm cut to its asked size (or all to the smallest when `final.equalize`); stops on a shortfall."""
    fin = run.cfg.final
    asked = {a.name: asked_size(run, a) for a in fin.arms if a.enabled}
    return size_arms(sets, asked, equalize=fin.equalize, tolerance=fin.shortfall_tolerance, seed=run.cfg.seed)


def table(run: Run, sizes: list[ArmSize]) -> list[dict[str, Any]]:
    """The arm table of the report: data, source, asked, available after the filters, got."""
    arms = {a.name: a for a in run.cfg.final.arms}
    return [
        {
            "arm": z.name,
            "data": arms[z.name].data,
            "source": describe(run, arms[z.name]),
            "asked": z.asked if z.asked is not None else "all",
            "available": z.available,
            "got": z.got,
        }
        for z in sizes
    ]


def check_equal_training(tok: PreTrainedTokenizerBase, examples: dict[str, list[Example]], fin: FinalOptions) -> None:
    """Refuse, before any student trains, arms that `equalize` made equal but training would make unequal:
    under `long_examples: drop` a sample longer than `max_seq_len` is left out of training."""
    if not fin.equalize:
        return
    for name, arm in examples.items():
        if too_long := len(arm) - sum(lineage.fits_training(tok, arm, fin.train)):
            raise ValueError(
                f"arm {name}: {too_long} of its {len(arm)} samples are longer than final.train.max_seq_len="
                f"{fin.train.max_seq_len}, and training would drop them (long_examples: {fin.train.long_examples}), "
                "so the equalized arms would train on different counts: raise final.train.max_seq_len or set "
                "final.train.long_examples: truncate"
            )


def train_students(run: Run, sets: list[InstructionSet], folder: Path) -> dict[str, dict[str, Any]]:
    """One student per non-empty arm, trained identically (same base, options and seed); a model card each."""
    fin = run.cfg.final
    student = prepare(fin.student, run.cache_dir)
    by_arm = {s.name: [student_example(r.problem, r.solution, fin.student_format) for r in s.rows] for s in sets}
    check_equal_training(transformers.AutoTokenizer.from_pretrained(student.path), by_arm, fin)
    trained = {}
    for s in sets:
        if not s.rows:
            log.warning("arm %s: no samples reached the filters; not trained", s.name)
            continue
        examples = by_arm[s.name]
        res = sft(examples, student.path, folder / s.name, fin.train, student.fingerprint)
        (res.final / "README.md").write_text(
            MODEL_CARD.format(
                base=fin.student.name,
                arm=s.name,
                run=run.name,
                method=fin.train.method,
                n=len(examples),
                fmt=fin.student_format,
                prompt_format=format_note(fin.student_format),
                train=fin.train.model_dump_json(),
            ),
            encoding="utf-8",
        )
        trained[s.name] = {
            "checkpoint": str(res.final),
            "samples": len(examples) - res.skipped,  # what it trained on
            "skipped": res.skipped,
            "steps": res.steps,
            "wall_s": res.wall_s,
            "final_loss": res.losses[-1][1],
        }
    return trained
