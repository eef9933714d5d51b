"""The committed teacher seed set: loading, validation, its train / held-out split, and training examples."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scoder_lib.core.config import Config
from scoder_lib.core.hashing import fingerprint
from scoder_lib.core.io import iter_jsonl, read_json
from scoder_lib.core.logs import get_logger
from scoder_lib.core.records import RecordError, Sample, SeedSample
from scoder_lib.data.decontam import Decontaminator
from scoder_lib.data.pool import snippet_key
from scoder_lib.method.synthesis import messages, parse, render, verify
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

    def heldout_files(self) -> set[str]:
        """The source files of the held-out snippets: later stages never sample from these either."""
        return {source_file(r) for r in self.heldout}


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


def source_file(row: SeedSample) -> str:
    """The file a seed snippet comes from (`snippet_source` is `<origin>:<path>:<line>`)."""
    return row.snippet_source.rsplit(":", 1)[0] if row.snippet_source.count(":") >= 2 else row.snippet_source


def split_by_source(rows: list[SeedSample], n_heldout: int, seed: int) -> dict[str, str]:
    """id -> split, holding out whole source files (and samples with a same-named twin together).

    Why whole files: a held-out snippet from a file the synthesizer trained on leaks its context;
    twins (the same entry point written twice) would leak the exercise itself.
    """
    parent = {r.id: r.id for r in rows}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first: dict[str, str] = {}
    for r in rows:
        for key in (f"file:{source_file(r)}", f"entry:{r.entry_point}"):
            if key in first:
                parent[root(r.id)] = root(first[key])
            first.setdefault(key, r.id)
    groups: dict[str, list[str]] = {}
    for r in rows:
        groups.setdefault(root(r.id), []).append(r.id)
    order = sorted(groups, key=lambda g: fingerprint([seed, sorted(groups[g])]))
    split = {r.id: "train" for r in rows}
    held = 0
    for g in order:
        if held >= n_heldout:
            break
        if held + len(groups[g]) <= n_heldout + 2:  # small groups only: no file dominates the yardstick
            for rid in groups[g]:
                split[rid] = "heldout"
            held += len(groups[g])
    return split


def leaks(seeds: SeedSet) -> list[str]:
    """Held-out samples sharing a source file or an entry point with a training sample (should be none)."""
    train_files = {source_file(r) for r in seeds.train}
    train_entries = {r.entry_point for r in seeds.train}
    return [r.id for r in seeds.heldout if source_file(r) in train_files or r.entry_point in train_entries]


# Stage 02 writes the teacher responses' lengths here; each stage that samples a synthesizer checks its
# own max_new_tokens against them (a stage reads only the config sections its settings hash covers).
RESPONSE_TOKENS = "teacher_response_tokens.json"


def response_tokens(tokenizer: Any, rows: list[SeedSample]) -> list[int]:
    """Each teacher response's length in the synthesizer's tokens: what `max_new_tokens` counts."""
    return [len(tokenizer(response(r), add_special_tokens=False)["input_ids"]) for r in rows]


def cut_at_limits(lengths: list[int], limits: dict[str, int], tolerance: float = 0.01) -> dict[str, float]:
    """The share of teacher responses longer than each sampling limit (name -> max_new_tokens).

    A synthesizer trained to write like its teacher is cut off that often at that limit: its tests
    (the last section) end mid-line and the sample fails to parse, which reads as the model's failure.
    Logs a warning where more than `tolerance` would be cut.
    """
    if not lengths:
        return {name: 0.0 for name in limits}
    shares = {name: sum(n > limit for n in lengths) / len(lengths) for name, limit in limits.items()}
    for name, share in shares.items():
        if share > tolerance:
            log.warning(
                "%s sampling stops at %d new tokens, shorter than %.0f%% of the teacher's responses (longest %d): "
                "raise its max_new_tokens",
                name,
                limits[name],
                100 * share,
                max(lengths),
            )
    return shares


def cut_by_limit(seed_dir: Path, name: str, max_new_tokens: int) -> float:
    """The share of the teacher responses (their lengths from stage 02's folder) cut at this limit."""
    return cut_at_limits(read_json(seed_dir / RESPONSE_TOKENS), {name: max_new_tokens})[name]
