"""Multi-checkpoint sampling: N synthesis samples from each of M checkpoints for K snippets."""

from __future__ import annotations

from pathlib import Path

from scoder_lib.core.config import Config
from scoder_lib.core.hashing import fingerprint
from scoder_lib.core.records import Candidate
from scoder_lib.data.pool import snippet_key
from scoder_lib.llm.generator import generator
from scoder_lib.method.synthesis import status_at_least, synthesize


def request_seed(base: int, iteration: int, checkpoint: int, key: str) -> int:
    """Seed of one (snippet, checkpoint) request; sample j draws from it and j.

    Why the checkpoint is in it: with one stream per snippet, sample j would use the same random
    numbers at every checkpoint and the M x N candidates would be needlessly alike.
    """
    return int(fingerprint([base, "candidates", iteration, checkpoint, key]), 16) % (2**31 - 1)


def sample(
    cfg: Config, checkpoints: list[str], snippets: list[str], iteration: int, cache_dir: Path, first: int = 0
) -> list[Candidate]:
    """K x M x N candidates (snippet, checkpoint, sample index, verdict, raw text, eligibility).

    `first`: the position of `checkpoints[0]` among the synthesizer's saved checkpoints. A checkpoint's
    seeds and label follow its position there, not in the sampled subset, so a run that samples only
    the last checkpoint (the M = 1 ablation) draws what the full method draws from it, and more samples.
    """
    opts = cfg.iterate
    sampling = opts.sampling.model_copy(update={"n": opts.samples_per_checkpoint})
    out: list[Candidate] = []
    for i, ckpt in enumerate(checkpoints):
        m = first + i
        gen = generator(cfg.synthesizer, cache_dir, model_path=ckpt)
        seeds = [request_seed(sampling.seed, iteration, m, snippet_key(s)) for s in snippets]
        rows = synthesize(
            gen,
            snippets,
            sampling,
            version=cfg.seed_stage.prompt_version,
            execution=cfg.execution,
            desc=f"checkpoint {m + 1} ({i + 1}/{len(checkpoints)} sampled)",
            seeds=seeds,
            cache_dir=cache_dir,
        )
        for k, (snip, samples) in enumerate(zip(snippets, rows)):
            for j, s in enumerate(samples):
                out.append(
                    Candidate(
                        **s.to_json(),
                        cand_id=f"t{iteration}-k{k}-m{m}-n{j}",
                        snippet_key=snippet_key(snip),
                        snippet=snip,
                        checkpoint=m,
                        checkpoint_path=ckpt,
                        sample=j,
                        eligible=status_at_least(s.status, opts.min_status),
                    )
                )
    return out
