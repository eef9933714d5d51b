"""The teacher ("proprietary LLM") seed set: loading, validation, splits, and extension via an API."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scoder_lib.core.config import Config
from scoder_lib.core.io import iter_jsonl
from scoder_lib.core.logs import get_logger
from scoder_lib.core.records import HeldoutSample, RecordError, Sample, SeedSample, write_records
from scoder_lib.data.decontam import Decontaminator
from scoder_lib.data.pool import snippet_key
from scoder_lib.llm.generator import Generator, generator
from scoder_lib.method.synthesis import messages, parse, render, synthesize, verify
from scoder_lib.method.train import Example

log = get_logger(__name__)


class SeedSetError(ValueError):
    """The seed file is malformed: names the file, the line and the field."""


@dataclass(frozen=True)
class SeedSet:
    rows: list[SeedSample]

    @property
    def train(self) -> list[SeedSample]:
        return [r for r in self.rows if r.split == "train"]

    @property
    def heldout(self) -> list[SeedSample]:
        return [r for r in self.rows if r.split == "heldout"]

    def snippet_keys(self) -> set[str]:
        """Every seed snippet (both splits): later stages never sample from these."""
        return {snippet_key(r.snippet) for r in self.rows}


def load(path: Path) -> SeedSet:
    if not path.is_file():
        raise SeedSetError(f"{path}: seed set not found (seed_stage.teacher.seed_file)")
    rows: list[SeedSample] = []
    seen: set[str] = set()
    for i, row in enumerate(iter_jsonl(path), 1):
        missing = [f for f in SeedSample.REQUIRED if not row.get(f)]
        if missing:
            raise SeedSetError(f"{path}:{i}: missing field(s) {', '.join(missing)}")
        if row["split"] not in ("train", "heldout"):
            raise SeedSetError(f"{path}:{i}: split must be 'train' or 'heldout', got {row['split']!r}")
        if row["id"] in seen:
            raise SeedSetError(f"{path}:{i}: duplicate id {row['id']}")
        seen.add(row["id"])
        try:
            rows.append(SeedSample.from_json(row))
        except RecordError as exc:
            raise SeedSetError(f"{path}:{i}: {exc}") from None
    return SeedSet(rows)


def response(row: SeedSample) -> str:
    """A teacher sample in the canonical output format (what the synthesizer learns to write)."""
    return render(row.problem, row.solution, row.tests)


def to_example(row: SeedSample, version: str = "v1") -> Example:
    return Example.of(messages(row.snippet, version), response(row))


def as_sample(row: SeedSample) -> Sample:
    return parse(response(row))


def heldout_rows(cfg: Config, seeds: SeedSet) -> list[SeedSample]:
    """The held-out snippets every synthesizer is measured on (02: base and enhanced; 04: each iteration's)."""
    return seeds.heldout[: cfg.seed_stage.heldout_compare]


def synthesize_heldout(
    cfg: Config, seeds: SeedSet, model_path: str | None, cache_dir: Path, out: Path, desc: str
) -> list[Sample]:
    """One synthesizer on the held-out yardstick, written to `out` with seed ids; one sample per snippet.

    Defined once so 02 and every iteration's 04 use the same snippets, sampling and prompt version:
    their rates are only comparable that way.
    """
    rows = heldout_rows(cfg, seeds)
    gen = generator(cfg.synthesizer, cache_dir, model_path=model_path)
    samples = [
        r[0]
        for r in synthesize(
            gen,
            [r.snippet for r in rows],
            cfg.seed_stage.compare_sampling,
            version=cfg.seed_stage.prompt_version,
            execution=cfg.execution,
            cache_dir=cache_dir,
            desc=desc,
        )
    ]
    write_records(out, [HeldoutSample(**s.to_json(), seed_id=r.id) for s, r in zip(samples, rows)])
    return samples


def validate(
    seeds: SeedSet, cfg: Config, dc: Decontaminator, cache_dir: Path
) -> tuple[list[Sample], list[dict[str, Any]]]:
    """Every seed sample run against its own tests in the sandbox, and checked for contamination."""
    e = cfg.execution
    checks = verify(
        [as_sample(r) for r in seeds.rows],
        workers=e.workers,
        timeout_s=e.timeout_s,
        memory_mb=e.memory_mb,
        isolation=e.isolation,
        desc="seed set in the sandbox",
        cache_dir=cache_dir,
    )
    rows = [
        {
            "id": r.id,
            "split": r.split,
            "passed": c.status == "passed",
            "reason": c.reason,
            "contaminated": str(dc.check(r.problem + "\n" + r.solution) or ""),
        }
        for r, c in zip(seeds.rows, checks)
    ]
    return checks, rows


def extend_with_teacher(
    cfg: Config, gen: Generator, snippets: list[str], cache_dir: Path | None = None
) -> list[SeedSample]:
    """New teacher samples for `snippets` through `gen` (the openai backend); valid ones only."""
    t = cfg.seed_stage.teacher
    samples = synthesize(
        gen,
        snippets,
        t.sampling,
        version=cfg.seed_stage.prompt_version,
        execution=cfg.execution,
        desc="teacher",
        cache_dir=cache_dir,
    )
    rows = []
    for snip, outs in zip(snippets, samples):
        s = outs[0]
        if s.status == "passed":
            rows.append(
                SeedSample(
                    id=f"api-{snippet_key(snip)[:10]}",
                    split="train",
                    snippet=snip,
                    problem=s.problem,
                    solution=s.solution,
                    tests=s.tests,
                    entry_point=s.entry_point,
                    prompt_version=cfg.seed_stage.prompt_version,
                    provenance=f"{t.model.name} via {t.model.openai.base_url}",
                )
            )
    log.info("teacher: %d of %d new samples valid", len(rows), len(snippets))
    return rows
