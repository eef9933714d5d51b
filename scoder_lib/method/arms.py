"""The data arms of the final comparison: which synthesizer (or teacher data) feeds each student."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scoder_lib.core.config import ArmOptions
from scoder_lib.core.logs import get_logger
from scoder_lib.core.records import Sample
from scoder_lib.core.run import Run
from scoder_lib.data.decontam import Decontaminator
from scoder_lib.llm.generator import generator
from scoder_lib.llm.models import prepare
from scoder_lib.method import lineage, seed, synthesis
from scoder_lib.method.instructions import MODEL_CARD, STUDENT_SYSTEM, InstructionSet, build, student_example
from scoder_lib.method.train import sft

log = get_logger(__name__)


def synthesizer_for(run: Run, arm: ArmOptions) -> str | None:
    """The checkpoint an arm synthesizes with; None for the base model (and the teacher arm)."""
    if arm.data in ("base", "teacher"):
        return None
    if arm.data == "enhanced":
        return lineage.load_synthesizer(run.upstream("02_seed")).final
    return lineage.final_synthesizer(run if arm.data == "method" else Run.open(arm.run or "")).final


def describe(run: Run, arm: ArmOptions) -> str:
    """What an arm's data comes from, for the report's arm table."""
    if arm.data == "teacher":
        return "teacher seed set"
    return synthesizer_for(run, arm) or run.cfg.synthesizer.name


def teacher_samples(seeds: seed.SeedSet) -> tuple[list[Sample], list[str]]:
    """The teacher arm: the seed set's training samples, marked passed.

    Why no sandbox run here: stage 02 ran every seed sample against its own tests and stops if
    one fails, so their verdict is known.
    """
    samples = [seed.as_sample(r) for r in seeds.train]
    for s in samples:
        s.status = "passed"
    return samples, [r.snippet for r in seeds.train]


def arm_samples(run: Run, arm: ArmOptions, seeds: seed.SeedSet, snippets: list[str]) -> tuple[list[Sample], list[str]]:
    """An arm's raw samples and the snippets that inspired them (one sample per snippet)."""
    if arm.data == "teacher":
        return teacher_samples(seeds)
    cfg, fin = run.cfg, run.cfg.final
    gen = generator(cfg.synthesizer, run.cache_dir, model_path=synthesizer_for(run, arm))
    rows = synthesis.synthesize(
        gen,
        snippets,
        fin.sampling,
        version=cfg.seed_stage.prompt_version,
        execution=cfg.execution,
        cache_dir=run.cache_dir,
        desc=f"final synthesis: {arm.name}",
    )
    return [r[0] for r in rows], snippets


def build_arms(
    run: Run, seeds: seed.SeedSet, snippets: list[str], dc: Decontaminator
) -> tuple[list[InstructionSet], dict[str, dict[str, float]]]:
    """Every enabled arm's filtered instruction set, and each arm's raw synthesis summary."""
    fin = run.cfg.final
    sets, raw = [], {}
    for arm in (a for a in fin.arms if a.enabled):
        samples, src = arm_samples(run, arm, seeds, snippets)
        raw[arm.name] = synthesis.summarize(samples)
        sets.append(
            build(arm.name, samples, src, min_status=fin.min_status, dedup_threshold=fin.dedup_threshold, dc=dc)
        )
    return sets, raw


def train_students(run: Run, sets: list[InstructionSet], folder: Path) -> dict[str, dict[str, Any]]:
    """One student per non-empty arm, trained identically (same base, options and seed); a model card each."""
    fin = run.cfg.final
    student = prepare(fin.student, run.cache_dir)
    trained = {}
    for s in sets:
        if not s.rows:
            log.warning("arm %s: no samples reached the filters; not trained", s.name)
            continue
        examples = [student_example(r.problem, r.solution) for r in s.rows]
        res = sft(examples, student.path, folder / s.name, fin.train, student.fingerprint)
        (res.final / "README.md").write_text(
            MODEL_CARD.format(
                base=fin.student.name,
                arm=s.name,
                run=run.name,
                method=fin.train.method,
                n=len(examples),
                system=STUDENT_SYSTEM,
                train=fin.train.model_dump_json(),
            ),
            encoding="utf-8",
        )
        trained[s.name] = {
            "checkpoint": str(res.final),
            "samples": len(examples),
            "steps": res.steps,
            "wall_s": res.wall_s,
            "final_loss": res.losses[-1][1],
        }
    return trained
