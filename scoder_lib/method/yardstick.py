"""The held-out yardstick: every synthesizer answers the same held-out seed snippets with the same seeds.

Defined once so 02 (base, enhanced), every iteration's 04 and the controls are measured the same
way: same snippets, sampling, seeds and prompt version. Same seeds make the comparisons paired:
sample j of snippet k is drawn with the same random stream by every synthesizer.
"""

from __future__ import annotations

from pathlib import Path

from scoder_lib.core.config import Config
from scoder_lib.core.records import HeldoutSample, SeedSample, read_records, write_records
from scoder_lib.core.run import Run
from scoder_lib.core.stats import paired_delta
from scoder_lib.llm.generator import generator
from scoder_lib.method import synthesis
from scoder_lib.method.seed import SeedSet


def heldout_rows(cfg: Config, seeds: SeedSet) -> list[SeedSample]:
    """The held-out snippets every synthesizer is measured on."""
    return seeds.heldout[: cfg.seed_stage.heldout_compare]


def measure(
    cfg: Config, seeds: SeedSet, model_path: str | None, cache_dir: Path, out: Path, desc: str
) -> list[HeldoutSample]:
    """One synthesizer on the yardstick (`compare_sampling.n` samples per snippet), written to `out`."""
    rows = heldout_rows(cfg, seeds)
    gen = generator(cfg.synthesizer, cache_dir, model_path=model_path)
    outs = synthesis.synthesize(
        gen,
        [r.snippet for r in rows],
        cfg.seed_stage.compare_sampling,
        version=cfg.seed_stage.prompt_version,
        execution=cfg.execution,
        cache_dir=cache_dir,
        desc=desc,
    )
    samples = [
        HeldoutSample(**s.to_json(), seed_id=r.id, sample=j) for r, per in zip(rows, outs) for j, s in enumerate(per)
    ]
    write_records(out, samples)
    return samples


def previous_file(run: Run, iteration: int) -> Path:
    """The yardstick file of the synthesizer iteration t started from (02's enhanced one for t=1)."""
    if iteration <= 1:
        return run.upstream("02_seed") / "heldout_enhanced.jsonl"
    return run.upstream("04_influence", iteration - 1) / "heldout.jsonl"


def load(path: Path) -> list[HeldoutSample]:
    return read_records(path, HeldoutSample)


def summarize(samples: list[HeldoutSample]) -> dict[str, float]:
    """A synthesizer's yardstick rates, the intervals clustered by snippet (its samples move together)."""
    return synthesis.summarize(samples, clusters=[s.seed_id for s in samples])


def compare(a: list[HeldoutSample], b: list[HeldoutSample], what: str = "valid", seed: int = 0) -> dict[str, float]:
    """b minus a on the same (snippet, sample) pairs, resampled by snippet: `what` = valid or parsed."""
    if what not in ("valid", "parsed"):
        raise ValueError(f"compare: what={what!r}; valid or parsed")
    key_a, key_b = ({(s.seed_id, s.sample): s for s in side} for side in (a, b))
    if len(key_a) != len(a) or len(key_b) != len(b) or key_a.keys() != key_b.keys():
        # a repeated (snippet, sample) would pair one sample twice and leave its sibling out
        raise ValueError("compare: the two yardstick files do not hold the same snippets and samples, once each")
    pairs = [(key_a[k], key_b[k]) for k in key_b]  # in b's order, as before
    ok = (lambda s: s.status == "passed") if what == "valid" else (lambda s: s.parsed)
    return paired_delta([ok(x) for x, _ in pairs], [ok(y) for _, y in pairs], [x.seed_id for x, _ in pairs], seed=seed)
