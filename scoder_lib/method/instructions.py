"""Instruction sets for the student: filtering synthesized samples, equal-size arms, and the saved dataset."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from scoder_lib.core.config import DedupOptions
from scoder_lib.core.io import atomic_path, write_text
from scoder_lib.core.records import InstructionSample, Sample
from scoder_lib.data.decontam import Decontaminator
from scoder_lib.data.dedup import exact_dedup, near_dedup
from scoder_lib.llm import student_format
from scoder_lib.method.synthesis import status_at_least
from scoder_lib.method.train import Example


@dataclass
class InstructionSet:
    name: str
    rows: list[InstructionSample]
    funnel: list[tuple[str, int]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)  # rows with the reason they were dropped


def student_example(problem: str, solution: str, fmt: str = "evalplus") -> Example:
    """A student's training example in the documented format (`llm.student_format`)."""
    return Example.of(student_format.messages(problem, fmt), student_format.response(solution, fmt))


def format_note(fmt: str) -> str:
    """One line for model cards and reports: how the student was prompted in training and evaluation."""
    if fmt == "evalplus":
        return (
            f'user = "{student_format.INSTRUCTION_PREFIX}" + the problem in a fence; assistant = '
            f'"{student_format.RESPONSE_PREFIX}" + the solution in a ```python block (EvalPlus\'s prompt)'
        )
    return (
        f'system "{student_format.STUDENT_SYSTEM}", user = the problem, assistant = the solution in a ```python block'
    )


def from_samples(samples: list[Sample], snippets: list[str]) -> list[InstructionSample]:
    """Synthesized samples (with their verdicts) as instruction rows, each with the snippet behind it."""
    return [
        InstructionSample(s.problem, s.solution, s.tests, s.entry_point, s.status, snip)
        for s, snip in zip(samples, snippets)
    ]


def build(
    name: str,
    rows: list[InstructionSample],
    *,
    min_status: str,
    dedup_threshold: float,
    dc: Decontaminator,
) -> InstructionSet:
    """Verdict filter -> exact and near dedup of the problems -> decontamination of problem + solution."""
    out = InstructionSet(name, [], [("synthesized", len(rows))])
    # "external" rows (a teacher dataset without tests) cannot be run: only dedup and decontamination apply.
    ok = [
        i
        for i, r in enumerate(rows)
        if (r.status == "external" or status_at_least(r.status, min_status)) and r.problem.strip() and r.solution
    ]
    out.rejects += [_reject(rows[i], f"status_{rows[i].status}") for i in sorted(set(range(len(rows))) - set(ok))]
    out.funnel.append((f"status >= {min_status}", len(ok)))
    first, _ = exact_dedup([rows[i].problem for i in ok])
    near = near_dedup([rows[ok[j]].problem for j in first], DedupOptions(threshold=dedup_threshold, min_shingles=5))
    unique = [ok[first[j]] for j in near.keep]
    out.rejects += [_reject(rows[i], "duplicate") for i in sorted(set(ok) - set(unique))]
    deduped = [rows[i] for i in unique]
    out.funnel.append(("deduplicated", len(deduped)))
    for r in deduped:
        hit = dc.check(f"{r.problem}\n{r.solution}")
        if hit is None:
            out.rows.append(r)
        else:
            out.rejects.append(_reject(r, f"contaminated:{hit.benchmark}:{hit.task_id}:{hit.stage}"))
    out.funnel.append(("decontaminated", len(out.rows)))
    return out


def _reject(row: InstructionSample, reason: str) -> dict[str, Any]:
    return dict(row.to_json(), reason=reason)


class ArmShortfall(ValueError):
    """An arm has fewer usable samples than asked, beyond the profile's tolerance."""


@dataclass(frozen=True)
class ArmSize:
    """What an arm asked for, had after its filters, and got."""

    name: str
    asked: int | None  # None: all it has
    available: int
    got: int


def size_arms(
    sets: list[InstructionSet], asked: dict[str, int | None], *, equalize: bool, tolerance: float, seed: int
) -> tuple[list[InstructionSet], list[ArmSize]]:
    """Cut each arm to its asked size (seeded), or every arm to the smallest one when `equalize`.

    An arm whose filtered set falls short of its asked size by more than `tolerance` (a share of the
    asked size) stops the stage: a comparison at other sizes than the profile says is not the one asked.
    """
    short = [
        f"arm '{s.name}': asked {asked[s.name]}, available {len(s.rows)}"
        for s in sets
        if asked[s.name] is not None and len(s.rows) < (1 - tolerance) * asked[s.name]
    ]
    if short:
        raise ArmShortfall(
            "; ".join(short) + f" (final.shortfall_tolerance {tolerance}): synthesize more "
            "snippets (final.snippets), add teacher data, or ask for fewer samples (arm n)"
        )
    target = {s.name: min(len(s.rows), asked[s.name] or len(s.rows)) for s in sets}
    if equalize:
        smallest = min(target.values(), default=0)
        target = dict.fromkeys(target, smallest)
    out, sizes = [], []
    for s in sets:
        rows = list(s.rows)
        random.Random(f"{seed}:{s.name}").shuffle(rows)
        out.append(InstructionSet(s.name, rows[: target[s.name]], s.funnel + [("sized", target[s.name])], s.rejects))
        sizes.append(ArmSize(s.name, asked[s.name], len(s.rows), target[s.name]))
    return out, sizes


DATASET_CARD = """---
license: apache-2.0
language: [en]
task_categories: [text-generation]
tags: [code, synthetic, scoder]
---
# {title}

Python code-instruction data synthesized by the SCoder study (run `{run}`, arm `{arm}`).

- Synthesizer: {synthesizer}
- Prompt version: {prompt_version}
- Samples: {n}
- Filters (samples remaining after each): {funnel}
- Fields: problem, solution, tests, entry_point, status, snippet (the pool snippet that inspired it)

Every sample's solution passed its own tests in the project's sandbox (unless the funnel says
otherwise), and problems were near-deduplicated and decontaminated against HumanEval(+), MBPP(+)
and BigCodeBench.

Licence notes: the inspiring snippets come from {sources}; generated text is released under
Apache-2.0 like the project. Check the licences of your own sources before redistribution.
"""


def save(inst: InstructionSet, folder: Path, card: dict[str, Any]) -> Path:
    """Parquet via Hugging Face `datasets`, plus a dataset card (README.md)."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = (
        datasets.Dataset.from_list([r.to_json() for r in inst.rows])
        if inst.rows
        else datasets.Dataset.from_dict({f.name: [] for f in dataclasses.fields(InstructionSample)})
    )
    with atomic_path(folder / "train.parquet") as tmp:
        ds.to_parquet(str(tmp))
    funnel = ", ".join(f"{k}: {v}" for k, v in inst.funnel)
    write_text(folder / "README.md", DATASET_CARD.format(funnel=funnel, n=len(inst.rows), **card))
    return folder


MODEL_CARD = """---
library_name: peft
base_model: {base}
tags: [code, scoder]
---
# SCoder student `{arm}` (run `{run}`)

{base} fine-tuned ({method}) on {n} instruction samples of the `{arm}` arm.
Prompt format ({fmt}): {prompt_format}
Load with `transformers.AutoModelForCausalLM.from_pretrained(<this folder>)` (peft installed).
Training: {train}
"""
