"""Stage 01's funnel: mine snippets -> exact dedup -> near dedup -> decontaminate; keep every reject."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scoder_lib.core.config import Config
from scoder_lib.core.io import read_jsonl, write_jsonl
from scoder_lib.core.logs import Progress, get_logger
from scoder_lib.data import decontam
from scoder_lib.data.dedup import exact_dedup, near_dedup
from scoder_lib.data.pool import Rejected, Snippet, mine

log = get_logger(__name__)


@dataclass
class PoolResult:
    snippets: list[Snippet]
    rejects: list[Rejected]
    funnel: list[tuple[str, int]]  # (step, snippets remaining)
    files: dict[str, int]
    cluster_sizes: list[int]
    contamination: list[dict[str, Any]] = field(default_factory=list)
    short_kept: int = 0


def run(cfg: Config) -> PoolResult:
    snippets, rejects, files = mine(cfg)
    funnel = [("extracted", len(snippets) + sum(r.lineno > 0 for r in rejects)), ("filtered", len(snippets))]

    keep, dup_of = exact_dedup([s.text for s in snippets])
    rejects += [_rej(snippets[i], "exact_duplicate", snippets[j].id) for i, j in dup_of.items()]
    snippets = [snippets[i] for i in keep]
    funnel.append(("exact dedup", len(snippets)))

    near = near_dedup([s.text for s in snippets], cfg.preprocess.dedup)
    rejects += [_rej(snippets[i], "near_duplicate", snippets[j].id) for i, j in near.dup_of.items()]
    short_ids = {snippets[i].id for i in near.short}
    snippets = [snippets[i] for i in near.keep]
    funnel.append(("near dedup", len(snippets)))

    clean, flagged = _decontaminate(cfg, snippets)
    rejects += [_rej(s, f"contaminated:{h['benchmark']}:{h['stage']}", h["task_id"]) for s, h in flagged]
    contamination = [h for _, h in flagged]
    funnel.append(("decontaminated", len(clean)))

    if cfg.preprocess.max_snippets is not None and len(clean) > cfg.preprocess.max_snippets:
        rng = random.Random(cfg.preprocess.seed)
        chosen = set(rng.sample(range(len(clean)), cfg.preprocess.max_snippets))
        rejects += [_rej(s, "over_max_snippets") for i, s in enumerate(clean) if i not in chosen]
        clean = [s for i, s in enumerate(clean) if i in chosen]
        funnel.append(("capped", len(clean)))
    return PoolResult(
        clean,
        rejects,
        funnel,
        files,
        sorted(near.cluster_sizes.values(), reverse=True),
        contamination,
        sum(s.id in short_ids for s in clean),
    )


def _rej(s: Snippet, reason: str, detail: str = "") -> Rejected:
    """A dropped snippet; `detail` names what it duplicates or which benchmark task it matches."""
    return Rejected(reason, s.source, s.path, s.name, s.lineno, s.text, detail)


def _decontaminate(cfg: Config, snippets: list[Snippet]) -> tuple[list[Snippet], list[tuple[Snippet, dict[str, Any]]]]:
    dc = decontam.build(cfg)
    clean, hits = [], []
    progress = Progress(len(snippets), "decontaminating", unit="snippets")
    for s in snippets:
        hit = dc.check(s.text)
        if hit is None:
            clean.append(s)
        else:
            hits.append(
                (
                    s,
                    {
                        "id": s.id,
                        "path": s.path,
                        "name": s.name,
                        "stage": hit.stage,
                        "benchmark": hit.benchmark,
                        "task_id": hit.task_id,
                        "score": hit.score,
                        "text": s.text,
                    },
                )
            )
        progress.update()
    return clean, hits


def save(result: PoolResult, folder: Path) -> dict[str, int]:
    """pool.jsonl, rejects.jsonl, contamination.jsonl; returns reject counts by reason."""
    write_jsonl(folder / "pool.jsonl", (s.to_json() for s in result.snippets))
    write_jsonl(folder / "rejects.jsonl", (r.to_json() for r in result.rejects))
    write_jsonl(folder / "contamination.jsonl", result.contamination)
    return dict(Counter(r.reason.split(":")[0] for r in result.rejects).most_common())


def load_pool(folder: Path) -> list[dict[str, Any]]:
    return read_jsonl(folder / "pool.jsonl")
