"""Optimizer-aware gradient influence (LESS, Xia et al. 2024), as SCoder uses it to pick samples.

For each checkpoint c of the previous synthesizer (a LoRA adapter saved with its Adam moments):
  1. per-sample LoRA gradients of the SFT loss (each sample's own mean over its response tokens)
     for every candidate (training side) and every teacher sample (target side), one backward per
     batch (`gradient_features`);
  2. candidates become Adam update directions with c's moments (`adam_direction`); targets stay
     plain gradients;
  3. both are reduced by a seeded Rademacher projection to D dims (`Projector`) and L2-normalised;
  4. influence(i) = sum_c avg_lr_c * mean_j cos(adam_c(i), grad_c(target j)), or max_j
     (`influence_scores`).

    scores = influence(checkpoints, candidates, teacher_examples, opts=cfg.influence, max_seq_len=...)

Modules: `projection` (the random projection), `gradients` (per-sample LoRA gradients, Adam
directions), `features` (projected, cached features per checkpoint), `scores` (the influence).

Features are cached on disk per (checkpoint, examples, kind, D, seed, max_seq_len), in shards
written atomically as they finish, so an interrupted stage resumes where it stopped.
"""
