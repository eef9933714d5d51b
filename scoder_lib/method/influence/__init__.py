"""Optimizer-aware gradient influence (LESS, Xia et al. 2024), as SCoder uses it to pick samples.

For each checkpoint c of the previous synthesizer (a LoRA adapter saved with its Adam moments):
  1. per-sample LoRA gradients of the SFT loss (each sample's own mean over its response tokens)
     for every candidate (training side) and every teacher sample (target side), one backward per
     batch (`gradient_features`);
  2. candidates become Adam update directions with c's moments (`adam_direction`); targets stay
     plain gradients;
  3. both are reduced to D dims by a seeded projection and L2-normalised: by default a sparse JL
     transform whose hashed codes are the same on every device (`SparseProjector`; cost ~P a sample),
     or LESS's dense Rademacher matrix (`RademacherProjector`; ~P x D);
  4. influence(i) = sum_c avg_lr_c * mean_j cos(adam_c(i), grad_c(target j)), or max_j
     (`influence_scores`).

    scores = influence(checkpoints, candidates, teacher_examples, opts=cfg.influence, max_seq_len=...)

Modules: `hashing` (the counter-based hash), `projection` (the projections), `gradients`
(per-sample LoRA gradients, Adam directions), `prefix` (the frozen layers below the first LoRA
layer, run once per sample), `checkpoints` (one model, each checkpoint's weights and moments
swapped in), `features` (projected, cached features at all checkpoints), `scores` (the influence).

Features are cached on disk per (checkpoint, examples, kind, projection, D, seed, max_seq_len), in
shards written atomically as they finish, so an interrupted stage resumes where it stopped.
"""
