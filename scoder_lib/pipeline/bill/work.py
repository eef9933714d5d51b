"""One line of the bill: a piece of work a stage does (generate, train, gradients, rate, run programs, buy).

The builders here turn config pieces into counts; `cost` turns counts into time. Counting rules that
mirror library code (`train.save_points`, `selection.keep_count`) are restated, not imported, because
those modules pull torch; tests/test_bill.py checks that the two agree.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from scoder_lib.core.config import ModelSpec, TrainOptions
from scoder_lib.pipeline.bill.lengths import Fit
from scoder_lib.pipeline.bill.models import ModelSize, train_flops

Kind = Literal["generate", "train", "gradients", "rate", "sandbox", "api", "host"]
FLOAT32_BYTES, ADAM_BYTES = 4, 8  # checkpoints are saved from float32 models, with exp_avg + exp_avg_sq


@dataclass
class Work:
    stage: str
    item: str
    kind: Kind
    model: str = ""
    backend: str = ""
    params: float = 0.0
    prompts: int = 0  # generation requests
    sequences: int = 0  # decoded sequences (requests x samples)
    batch: int = 1  # sequences decoded together (what CPU speed depends on)
    prompt_tokens: float = 0.0
    generated_tokens: float = 0.0
    examples: float = 0.0  # training examples kept (an expected count: n x the share that fits)
    steps: int = 0
    checkpoints: int = 0
    trained_tokens: float = 0.0  # tokens x epochs
    grad_passes: int = 0  # per-sample forward + backward passes
    grad_tokens: float = 0.0
    lora_params: float = 0.0  # gradient width (projection cost)
    projection_dim: int = 0
    projection: str = "sjlt"  # influence.projection: sjlt costs ~P a sample, rademacher ~P x D
    shards: int = 0  # projection calls (each regenerates the +-1 blocks)
    ratings: int = 0
    forward_tokens: float = 0.0
    flops: float = 0.0  # training, gradient or rating compute
    precision: str = "bf16"  # bf16 (tensor cores) or fp32 (what the GPU peak is)
    programs: int = 0
    timeout_s: float = 0.0
    workers: int = 0  # sandbox workers (execution.workers)
    usd: float = 0.0
    loads: int = 0  # model loads (a vLLM engine start each)
    merges: int = 0  # LoRA checkpoints merged into a float32 copy for vLLM
    disk_bytes: float = 0.0
    host_s: float = 0.0  # fixed host work (mining the pool, rendering reports)
    note: str = ""
    gpu_s: float = 0.0  # filled in by cost.price
    cpu_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (0, 0.0, "", None)}


def save_points_count(total_steps: int, m: int) -> int:
    """How many checkpoints `train.save_points` keeps: M evenly spaced steps, at most one per step."""
    m = max(1, min(m, total_steps))
    return len({max(1, round(k * total_steps / m)) for k in range(1, m + 1)})


def keep_count(selected: int, available: int, fraction: float) -> int:
    """`selection.keep_count`: the fraction of the selected, at least one, at most the available."""
    return min(available, max(1, round(fraction * selected))) if selected else 0


def top_count(snippets: int, with_any: int, fraction: float) -> int:
    """`selection.select_count`, capped as the selection is: the fraction of the snippets sampled, at
    least one, at most those with an eligible candidate."""
    return min(with_any, max(1, round(fraction * snippets))) if snippets else 0


def generation(
    stage: str, item: str, spec: ModelSpec, size: ModelSize, prompts: int, samples: int, lengths: tuple[float, float]
) -> Work:
    """`prompts` requests x `samples` each; `lengths` = (prompt tokens, generated tokens) per sequence."""
    sequences = prompts * samples
    return Work(
        stage,
        item,
        "generate",
        model=spec.name,
        backend=spec.backend,
        params=size.params,
        prompts=prompts,
        sequences=sequences,
        batch=max(1, min(spec.batch_size, sequences)),
        prompt_tokens=prompts * lengths[0],
        generated_tokens=sequences * lengths[1],
        loads=1 if prompts else 0,
    )


def training(stage: str, item: str, size: ModelSize, opts: TrainOptions, n: int, kept: Fit) -> Work:
    """SFT of n examples (kept.share of them fit max_seq_len): steps, checkpoints, tokens, compute, disk."""
    examples = n * kept.share
    if examples <= 0:
        return Work(stage, item, "train", model=size.name, note="no example fits: nothing trained")
    per_step = opts.batch_size * opts.grad_accum
    steps = opts.max_steps or max(1, math.ceil(examples / per_step * opts.epochs))
    trained = steps * per_step * kept.tokens if opts.max_steps else examples * opts.epochs * kept.tokens
    ckpts = save_points_count(steps, opts.num_checkpoints)
    return Work(
        stage,
        item,
        "train",
        model=size.name,
        params=size.params,
        examples=examples,
        steps=steps,
        checkpoints=ckpts,
        trained_tokens=trained,
        flops=trained * train_flops(size, opts),
        precision="bf16" if opts.extra_args.get("bf16") or opts.extra_args.get("fp16") else "fp32",
        loads=1,
        disk_bytes=ckpts * checkpoint_bytes(size, opts),
        note=f"{opts.method}, {examples:,.0f} of {n:,} examples fit max_seq_len {opts.max_seq_len}",
    )


def checkpoint_bytes(size: ModelSize, opts: TrainOptions) -> float:
    """One saved checkpoint: float32 weights (the adapter, or the whole model) and, when kept, their Adam moments."""
    trainable = size.params if opts.method == "full" else size.lora_params(opts.lora)
    return trainable * (FLOAT32_BYTES + (ADAM_BYTES if opts.save_moments else 0))


def sandbox(stage: str, item: str, programs: float, timeout_s: float, workers: int) -> Work:
    return Work(stage, item, "sandbox", programs=round(programs), timeout_s=timeout_s, workers=workers)
