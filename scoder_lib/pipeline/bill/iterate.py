"""The work of one iteration: 03 (sample, verify, rate, the weight fit) and 04 (influence, train, measure)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from scoder_lib.pipeline.bill.constants import CHARS_PER_TOKEN, CPU_FIT_STEP_ROW_S, CPU_FIT_STEP_S
from scoder_lib.pipeline.bill.context import Ctx
from scoder_lib.pipeline.bill.lengths import Fit, fit, rating_tokens
from scoder_lib.pipeline.bill.models import gradient_flops
from scoder_lib.pipeline.bill.stages import verify, yardstick
from scoder_lib.pipeline.bill.work import FLOAT32_BYTES, Work, keep_count, top_count, training

SHARD_BYTES, MAX_SHARD_ROWS = 1 << 30, 512  # method.influence.features: gradients buffered per projection


@dataclass
class IterState:
    """What iteration t hands to t+1: its synthesizer's checkpoint count and the kept counts so far."""

    checkpoints: int
    kept: list[int] = field(default_factory=list)


def iteration(c: Ctx, t: int, state: IterState) -> tuple[list[Work], list[Work], IterState]:
    """03@t and 04@t, and the state iteration t+1 starts from."""
    w03, selected = sample_score(c, t, state)
    w04, after = influence(c, t, state, selected)
    return w03, w04, after


def sampled_checkpoints(c: Ctx, state: IterState) -> int:
    """M: the last `iterate.checkpoints` of the synthesizer's saved checkpoints (all when unset)."""
    return min(c.cfg.iterate.checkpoints or state.checkpoints, state.checkpoints)


def sample_score(c: Ctx, t: int, state: IterState) -> tuple[list[Work], int]:
    """03@t: K x M x N candidates, their ratings, and the weight fit (the teacher's ratings in the first
    iteration: later ones hit their cache). Returns the work and the number of selected candidates."""
    cfg, it, st = c.cfg, c.cfg.iterate, f"03_sample_score@{t}"
    m, k, n = sampled_checkpoints(c, state), it.snippets_per_iteration, it.samples_per_checkpoint
    gen = c.synthesis(st, f"candidates: {k:,} snippets x {m} checkpoints x {n}", cfg.synthesizer, k * m, it.sampling)
    gen.batch, gen.loads = max(1, min(cfg.synthesizer.batch_size, k * n)), m  # one call per checkpoint
    gen.sequences, gen.generated_tokens = k * m * n, k * m * n * c.synth_tokens(it.sampling.max_new_tokens)
    gen.merges, gen.disk_bytes = c.merges(cfg.synthesizer, m - 1)  # the last one (t-1's final) is merged already
    out = [gen, verify(c, st, "sandbox: candidates", gen.sequences)]
    p = c.rate(it.min_status)
    if it.weights.mode != "none":
        chars = c.synth_tokens(it.sampling.max_new_tokens) * CHARS_PER_TOKEN.value
        out.append(ratings(c, st, "ratings of the eligible candidates", gen.sequences * p, chars))
        if it.weights.mode == "fit":
            out += weight_fit(c, st, t, gen.sequences * p)
    with_any = round(k * (1.0 - (1.0 - p) ** (m * n)))  # snippets with at least one eligible candidate
    return out, top_count(k, with_any, it.keep_top_fraction)


def ratings(c: Ctx, stage: str, item: str, count: float, sample_chars: float) -> Work:
    """`count` digit ratings (Z aspects each, one forward over a shared prefix) by the scorer."""
    it, size = c.cfg.iterate, c.sizes["scorer"]
    each = rating_tokens(c.seed.mean("snippet_chars"), sample_chars, list(it.aspects))
    spec = it.scorer or c.cfg.synthesizer
    n = round(count)
    return Work(
        stage,
        item,
        "rate",
        model=spec.name,
        backend=spec.backend,
        params=size.params,
        ratings=n,
        forward_tokens=n * each,
        flops=n * each * 2.0 * size.params,
        precision="fp32" if spec.dtype == "float32" else "bf16",
        loads=1 if n else 0,
    )


def weight_fit(c: Ctx, stage: str, t: int, eligible: float) -> list[Work]:
    """Teacher samples (rated in the first iteration, cached after) against the iteration's eligible
    candidates (rated already): the logistic fits, every iteration."""
    cfg = c.cfg
    n = min(cfg.iterate.fit_snippets, c.teacher_train)
    w = cfg.iterate.weights
    fits = 1 + w.bootstrap + w.cv_folds  # the point estimate, every bootstrap refit, the CV folds
    step = CPU_FIT_STEP_S.value + CPU_FIT_STEP_ROW_S.value * (n + eligible)
    teacher = [ratings(c, stage, "weight fit: rate the teacher's samples", n, c.seed.mean("response_chars"))]
    return [
        *(teacher if t == 1 else []),
        Work(stage, f"weight fit: {fits} logistic fits x {w.steps} steps", "host", host_s=fits * w.steps * step),
    ]


def influence(c: Ctx, t: int, state: IterState, selected: int) -> tuple[list[Work], IterState]:
    """04@t: gradient features of the selected candidates and the teacher targets at every checkpoint of
    synthesizer t-1 (M limits sampling only); the next synthesizer trained on what `influence.train_data`
    says; the yardstick; the same-size control."""
    inf, st = c.cfg.influence, f"04_influence@{t}"
    m = state.checkpoints
    targets = c.teacher_train if inf.max_target_samples is None else min(c.teacher_train, inf.max_target_samples)
    out = [gradients(c, st, t, m, selected, targets)] if inf.select == "influence" and selected else []
    kept = keep_count(selected, selected, inf.keep_fraction)
    history = [*state.kept, kept]
    n_cand = sum(history) if inf.train_data == "accumulated" else kept
    n_seed = c.teacher_train if inf.train_data == "kept+seed" else 0
    if n_cand + n_seed == 0:
        out.append(Work(st, f"synthesizer {t}: carried over (nothing kept)", "host"))
        return out, IterState(state.checkpoints, history)
    train = synth_training(c, st, t, f"synthesizer {t} ({inf.train_data})", n_cand, n_seed)
    out += [train, *yardstick(c, st, f"synthesizer {t}", merged=1)]
    if t in inf.control:
        out += [synth_training(c, st, t, f"control {t} (random, same size)", n_cand, n_seed)]
        out += yardstick(c, st, f"control {t}", merged=1)
    return out, IterState(max(train.checkpoints, 1), history)


def synth_training(c: Ctx, stage: str, t: int, item: str, n_cand: int, n_seed: int) -> Work:
    """SFT of the next synthesizer on n_cand candidates and n_seed teacher samples (LoRA shape of its adapter)."""
    cfg = c.cfg
    opts = cfg.influence.train.model_copy(update={"lora": c.synth_lora(t + 1)})
    gen = c.synth_tokens(cfg.iterate.sampling.max_new_tokens)
    a = fit([(r.prompt, gen) for r in c.seed.rows], opts)
    b = fit([(r.prompt, r.response) for r in c.seed.train], opts)
    kept_a, kept_b = n_cand * a.share, n_seed * b.share
    total = n_cand + n_seed
    share = (kept_a + kept_b) / total
    mean = (kept_a * a.tokens + kept_b * b.tokens) / max(kept_a + kept_b, 1e-9)
    return training(stage, item, c.sizes["synthesizer"], opts, total, Fit(share, mean))


def gradients(c: Ctx, stage: str, t: int, m: int, selected: int, targets: int) -> Work:
    """(selected + targets) x M per-sample gradient passes in float32, each projected to D dimensions."""
    inf, size, lora = c.cfg.influence, c.sizes["synthesizer"], c.synth_lora(t)
    limit = inf.train.max_seq_len  # 04 passes influence.train.max_seq_len; longer examples are truncated
    gen = c.synth_tokens(c.cfg.iterate.sampling.max_new_tokens)
    cand = statistics.fmean(min(r.prompt + gen, limit) for r in c.seed.rows)
    tgt = statistics.fmean(min(r.prompt + r.response, limit) for r in c.seed.train)
    width = size.lora_params(lora)
    rows = max(inf.batch_size, min(MAX_SHARD_ROWS, SHARD_BYTES // max(int(4 * width), 1)))
    grad_tokens = m * (selected * cand + targets * tgt)
    return Work(
        stage,
        f"influence: ({selected:,} candidates + {targets:,} targets) x {m} ckpts",
        "gradients",
        model=size.name,
        params=size.params,
        grad_passes=(selected + targets) * m,
        grad_tokens=grad_tokens,
        lora_params=width,
        projection_dim=inf.projection_dim,
        projection=inf.projection,
        shards=m * (math.ceil(selected / rows) + math.ceil(targets / rows)),
        flops=grad_tokens * gradient_flops(size, lora),
        precision="fp32",  # features.load_checkpoint loads the model in float32
        loads=m,
        disk_bytes=(selected + targets) * m * inf.projection_dim * FLOAT32_BYTES,  # the features cache
    )
