"""Instruction sets for the student: filtering synthesized samples, equal-size arms, and the saved dataset."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import DedupOptions
from .decontam import Decontaminator
from .dedup import exact_dedup, near_dedup
from .synthesis import Sample, status_at_least
from .train import Example

STUDENT_SYSTEM = "You are an expert Python programmer. Answer with a correct, self-contained solution."


@dataclass
class InstructionSet:
    name: str
    rows: list[dict[str, Any]]
    funnel: list[tuple[str, int]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)


def student_example(problem: str, solution: str) -> Example:
    """The documented student format: the problem as the user turn, the solution in a fenced block."""
    return Example.of([{"role": "system", "content": STUDENT_SYSTEM}, {"role": "user", "content": problem.strip()}],
                      f"```python\n{solution.strip()}\n```")


def build(name: str, samples: list[Sample], snippets: list[str], *, min_status: str, dedup_threshold: float,
          dc: Decontaminator) -> InstructionSet:
    """Verdict filter -> exact and near dedup of the problems -> decontamination of problem + solution."""
    rows = [{"problem": s.problem, "solution": s.solution, "tests": s.tests, "entry_point": s.entry_point,
             "status": s.status, "snippet": snip} for s, snip in zip(samples, snippets)]
    out = InstructionSet(name, [], [("synthesized", len(rows))])
    ok = [i for i, r in enumerate(rows)
          if status_at_least(r["status"], min_status) and r["problem"].strip() and r["solution"]]
    out.rejects += [dict(rows[i], reason=f"status_{rows[i]['status']}") for i in sorted(set(range(len(rows))) - set(ok))]
    out.funnel.append((f"status >= {min_status}", len(ok)))
    first, _ = exact_dedup([rows[i]["problem"] for i in ok])
    near = near_dedup([rows[ok[j]]["problem"] for j in first], DedupOptions(threshold=dedup_threshold, min_shingles=5))
    unique = [ok[first[j]] for j in near.keep]
    out.rejects += [dict(rows[i], reason="duplicate") for i in sorted(set(ok) - set(unique))]
    deduped = [rows[i] for i in unique]
    out.funnel.append(("deduplicated", len(deduped)))
    for r in deduped:
        hit = dc.check(f"{r['problem']}\n{r['solution']}")
        if hit is None:
            out.rows.append(r)
        else:
            out.rejects.append(dict(r, reason=f"contaminated:{hit.benchmark}:{hit.task_id}:{hit.stage}"))
    out.funnel.append(("decontaminated", len(out.rows)))
    return out


def equalize(sets: list[InstructionSet], n: int | None, seed: int) -> tuple[int, list[InstructionSet]]:
    """Subsample every non-empty arm to the same size (n, or the smallest arm), seeded."""
    sizes = [len(s.rows) for s in sets if s.rows]
    if not sizes:
        return 0, sets
    size = min(sizes + ([n] if n else []))
    out = []
    for s in sets:
        rows = list(s.rows)
        random.Random(f"{seed}:{s.name}").shuffle(rows)
        out.append(InstructionSet(s.name, rows[:size] if len(rows) >= size else [], s.funnel, s.rejects))
    return size, out


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
    import datasets

    folder.mkdir(parents=True, exist_ok=True)
    ds = datasets.Dataset.from_list(inst.rows) if inst.rows else datasets.Dataset.from_dict(
        {k: [] for k in ("problem", "solution", "tests", "entry_point", "status", "snippet")})
    tmp = folder / "train.parquet.tmp"
    ds.to_parquet(str(tmp))
    tmp.replace(folder / "train.parquet")
    funnel = ", ".join(f"{k}: {v}" for k, v in inst.funnel)
    (folder / "README.md").write_text(DATASET_CARD.format(funnel=funnel, n=len(inst.rows), **card), encoding="utf-8")
    return folder


MODEL_CARD = """---
library_name: peft
base_model: {base}
tags: [code, scoder]
---
# SCoder student `{arm}` (run `{run}`)

{base} fine-tuned ({method}) on {n} instruction samples of the `{arm}` arm.
Prompt format: system "{system}", user = the problem, assistant = the solution in a ```python block.
Load with `transformers.AutoModelForCausalLM.from_pretrained(<this folder>)` (peft installed).
Training: {train}
"""
