"""The teacher data of a run: the committed seed set, samples bought through the API, an optional dataset.

One definition so that every consumer sees the same teacher: the weight fit (03), the influence
targets (04), the teacher arm (05) and the cost table all read `load(run)`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from scoder_lib.core.config import Config, DecontamOptions, TeacherDataset
from scoder_lib.core.io import read_json, write_json
from scoder_lib.core.logs import get_logger
from scoder_lib.core.records import InstructionSample, SeedSample, read_records, write_records
from scoder_lib.core.run import Run
from scoder_lib.data.decontam import Decontaminator
from scoder_lib.data.pool import allocate, snippet_key
from scoder_lib.llm.generator import Generator, generator
from scoder_lib.method import seed as seedset
from scoder_lib.method.synthesis import synthesize

log = get_logger(__name__)
BOUGHT = "teacher_new.jsonl"  # 02 writes the samples it bought here ...
USAGE = "teacher_usage.json"  # ... and what the API calls cost (all requests, valid answers or not)
_FENCE = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)```", re.S | re.I)


@dataclass(frozen=True)
class TeacherData:
    seeds: seedset.SeedSet
    bought: list[SeedSample] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)

    @property
    def train(self) -> list[SeedSample]:
        """Every teacher sample the method may learn from: committed training split, then bought ones."""
        return self.seeds.train + self.bought

    def snippet_keys(self) -> set[str]:
        """Every teacher snippet (both splits, bought ones too): later stages never sample from these."""
        return self.seeds.snippet_keys() | {snippet_key(r.snippet) for r in self.bought}

    def heldout_files(self) -> set[str]:
        """Source files of the held-out yardstick (bought samples are never held out)."""
        return self.seeds.heldout_files()

    def fit_rows(self, n: int, seed: int) -> list[SeedSample]:
        """A seeded sample of `n` training samples for the weight fit (committed and bought alike)."""
        rows = list(self.train)
        random.Random(f"{seed}:weight-fit").shuffle(rows)
        return rows[:n]


def load(run: Run) -> TeacherData:
    """The run's teacher data: the configured seed file plus what 02 bought (once 02 has run)."""
    cfg = run.cfg
    seeds = seedset.load(cfg.resolve(cfg.seed_stage.teacher.seed_file))
    folder = run.stage_dir("02_seed")
    bought = read_records(folder / BOUGHT, SeedSample) if (folder / BOUGHT).exists() else []
    usage = read_json(folder / USAGE) if (folder / USAGE).exists() else {}
    return TeacherData(seeds, bought, usage)


def buy(
    cfg: Config, seeds: seedset.SeedSet, pool: list[dict[str, Any]], cache_dir: Path, folder: Path
) -> list[SeedSample]:
    """Send `n_new` fresh pool snippets to the teacher endpoint; keep the valid answers; record the cost."""
    t = cfg.seed_stage.teacher
    fresh = allocate(pool, seeds.snippet_keys(), t.n_new, cfg.seed, "teacher", exclude_files=seeds.heldout_files())
    gen = generator(t.model, cache_dir)
    rows = extend_with_teacher(cfg, gen, [s["text"] for s in fresh], cache_dir)
    write_records(folder / BOUGHT, rows)
    usage = dict(
        getattr(gen.backend, "totals", {}),
        requested=len(fresh),
        valid=len(rows),
        model=t.model.name,
        base_url=t.model.openai.base_url,
    )
    write_json(folder / USAGE, usage)
    return rows


def extend_with_teacher(
    cfg: Config, gen: Generator, snippets: list[str], cache_dir: Path | None = None
) -> list[SeedSample]:
    """New teacher samples for `snippets` through `gen` (the openai backend); valid ones only."""
    t = cfg.seed_stage.teacher
    outs = synthesize(
        gen,
        snippets,
        t.sampling,
        version=cfg.seed_stage.prompt_version,
        execution=cfg.execution,
        desc="teacher",
        cache_dir=cache_dir,
    )
    rows = []
    for snip, samples in zip(snippets, outs):
        s = samples[0]
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


def dataset_samples(opts: TeacherDataset, cfg: Config) -> list[InstructionSample]:
    """Rows of an external teacher dataset as instruction samples (no tests: status 'external')."""
    if opts.path is not None:
        path = cfg.resolve(opts.path)
        kind = "parquet" if path.suffix == ".parquet" else "json"
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    else:
        ds = datasets.load_dataset(opts.dataset, split=opts.split)
    missing = [f for f in (opts.problem_field, opts.solution_field) if f not in ds.column_names]
    if missing:
        where = opts.path or opts.dataset
        raise ValueError(
            f"teacher dataset {where}: no field(s) {missing}; it has {ds.column_names} "
            "(set seed_stage.teacher.dataset.problem_field / solution_field)"
        )
    return [
        InstructionSample(r[opts.problem_field], code_of(r[opts.solution_field]), "", "", "external", "") for r in ds
    ]


def without_heldout(
    rows: list[InstructionSample], heldout: list[SeedSample], opts: DecontamOptions
) -> list[InstructionSample]:
    """A teacher dataset's rows less those that copy a held-out teacher problem (its statement or its
    solution), by the decontamination rules used against the benchmarks.

    Why: the held-out problems are the students' in-distribution yardstick. Synthesized arms never see
    them (their snippets come from other source files), and the teacher arm's committed part is the
    training split; a dataset file has no such provenance (it may even be the run's own seed file, held-out
    split included), so it is checked by its content."""
    if not rows or not heldout:
        return rows
    dc = Decontaminator([("heldout", r.id, t) for r in heldout for t in (r.problem, r.solution)], opts)
    keep = [r for r in rows if dc.check(f"{r.problem}\n{r.solution}") is None]
    if len(keep) < len(rows):
        log.warning(
            "teacher dataset: %d of %d rows copy a held-out teacher problem: left out", len(rows) - len(keep), len(rows)
        )
    return keep


def code_of(solution: str) -> str:
    """The first fenced Python block of a prose answer (OSS-Instruct style), else the answer itself."""
    m = _FENCE.search(solution)
    return m.group(1).strip("\n") if m else solution
