"""Influence scores: lr-weighted cosine of candidate Adam directions to teacher gradients, over checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np

from scoder_lib.core.config import InfluenceOptions
from scoder_lib.method.influence.features import checkpoint_features
from scoder_lib.method.train import Example


def influence_scores(
    candidate_feats: list[np.ndarray],
    target_feats: list[np.ndarray],
    lrs: list[float],
    aggregate: Literal["mean", "max"] = "mean",
) -> np.ndarray:
    """score_i = sum_c lrs[c] * agg_j <cand_c[i], target_c[j]>, agg = mean or max over targets.

    Rows are L2-normalised features, so the inner product is the cosine.
    """
    if not (len(candidate_feats) == len(target_feats) == len(lrs)) or not lrs:
        raise ValueError("need one candidate matrix, one target matrix and one lr per checkpoint")
    if aggregate not in ("mean", "max"):
        raise ValueError(f"aggregate must be 'mean' or 'max', got {aggregate!r}")
    scores = np.zeros(len(candidate_feats[0]), dtype=np.float64)
    for cand, target, lr in zip(candidate_feats, target_feats, lrs):
        if cand.shape[0] != scores.shape[0] or cand.shape[1] != target.shape[1]:
            raise ValueError(f"feature shapes disagree: {cand.shape} vs {target.shape}")
        target_t = target.T.astype(np.float64)
        for s in range(0, len(cand), 4096):  # bounds the candidates x targets block
            sims = cand[s : s + 4096].astype(np.float64) @ target_t
            scores[s : s + 4096] += lr * (sims.mean(1) if aggregate == "mean" else sims.max(1))
    return scores


def checkpoint_lr(checkpoint: Path) -> float:
    """The checkpoint's average learning rate since the previous one (LESS's weight)."""
    return float(json.loads((checkpoint / "meta.json").read_text())["avg_lr"])


def pick_targets(targets: list[Example], opts: InfluenceOptions) -> list[Example]:
    """At most `max_target_samples` of the targets, a seeded subset in their order (bounds the cost)."""
    if opts.max_target_samples is None or len(targets) <= opts.max_target_samples:
        return targets
    pick = np.random.default_rng(opts.projection_seed).choice(len(targets), opts.max_target_samples, replace=False)
    return [targets[i] for i in sorted(pick)]


def influence(
    checkpoints: list[Path],
    candidates: list[Example],
    targets: list[Example],
    *,
    opts: InfluenceOptions,
    max_seq_len: int,
    cache_dir: Path | None = None,
) -> np.ndarray:
    """Influence score of every candidate on the target set, over all checkpoints (LESS)."""
    targets = pick_targets(targets, opts)
    # All checkpoints at once: they share one model and the frozen prefix's states of each sample.
    common = {"opts": opts, "max_seq_len": max_seq_len, "cache_dir": cache_dir}
    cand = checkpoint_features(checkpoints, candidates, kind="adam", **common)
    tgt = checkpoint_features(checkpoints, targets, kind="sgd", **common)
    return influence_scores(cand, tgt, [checkpoint_lr(c) for c in checkpoints], opts.aggregate)
