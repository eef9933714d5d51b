"""Multi-checkpoint sampling: N synthesis samples from each of M checkpoints for K snippets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import Config
from .llm import generator
from .pool import snippet_key
from .synthesis import status_at_least, synthesize


def sample(cfg: Config, checkpoints: list[str], snippets: list[str], iteration: int, cache_dir: Path
           ) -> list[dict[str, Any]]:
    """K x M x N candidate records (snippet, checkpoint, sample index, verdict, raw text, eligibility)."""
    it = cfg.iterate
    sampling = it.sampling.model_copy(update={"n": it.samples_per_checkpoint})
    out: list[dict[str, Any]] = []
    for m, ckpt in enumerate(checkpoints):
        gen = generator(cfg.synthesizer, cache_dir, model_path=ckpt)
        rows = synthesize(gen, snippets, sampling, version=cfg.seed_stage.prompt_version, execution=cfg.execution,
                          desc=f"checkpoint {m + 1}/{len(checkpoints)}", seed_offset=100_000 * iteration,
                          cache_dir=cache_dir)
        for k, (snip, samples) in enumerate(zip(snippets, rows)):
            for j, s in enumerate(samples):
                out.append({"cand_id": f"t{iteration}-k{k}-m{m}-n{j}", "snippet_key": snippet_key(snip),
                            "snippet": snip, "checkpoint": m, "checkpoint_path": ckpt, "sample": j,
                            **s.to_json(), "eligible": status_at_least(s.status, it.min_status)})
    return out
