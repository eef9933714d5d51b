"""From counts to time: GPU seconds on a named GPU and CPU seconds on the 2-core reference machine.

GPU time is the time a stage holds the GPU: its compute, plus what the GPU waits for (engine
starts, merges, the projection, the sandbox). CPU time is the wall time
of the same work on the reference machine, from the measured throughputs of SmolLM2-135M scaled by
FLOPs (at most `cpu_small_speedup_cap` faster for smaller models).
"""

from __future__ import annotations

from scoder_lib.pipeline.bill import constants as k
from scoder_lib.pipeline.bill.assumptions import Assumptions
from scoder_lib.pipeline.bill.models import KNOWN
from scoder_lib.pipeline.bill.work import FLOAT32_BYTES, Work

# The measured configuration: SmolLM2-135M, LoRA on its last 8 of 30 layers (tiny's seed training).
REF_PARAMS = KNOWN["smollm2-135m-instruct"].params
REF_LORA_FLOPS = 2.0 * REF_PARAMS * (1.0 + 8 / 30)  # per token, forward + backward through 8 of 30 layers


def price(w: Work, gpu: k.Gpu, a: Assumptions, cpu_warnings: list[str]) -> Work:
    """Fill in `w.gpu_s` and `w.cpu_s` (and say where influence's GPU time goes)."""
    w.gpu_s = gpu_seconds(w, gpu, a)
    w.cpu_s = cpu_seconds(w, a, cpu_warnings)
    if w.kind == "gradients" and w.gpu_s:
        w.note = f"{_projection_gpu(w, gpu, a) / w.gpu_s:.0%} of its GPU time is the projection ({w.projection})"
    return w


def _projection_gpu(w: Work, gpu: k.Gpu, a: Assumptions) -> float:
    """sjlt: one signed scatter-add a parameter, memory-bound; rademacher (LESS): the +-1 blocks are
    made with numpy on the host for every shard, copied over, then multiplied (P x D a sample)."""
    if w.projection == "none":
        return 0.0
    if w.projection == "sjlt":
        return w.grad_passes * w.lora_params * k.SJLT_BYTES_PER_PARAM.value / a.hbm_bytes_s
    fp32 = gpu.fp32_flops.value * a.influence_fp32_efficiency
    blocks = w.shards * w.lora_params * w.projection_dim
    return (
        blocks * k.CPU_PROJECTION_NS.value * 1e-9
        + blocks * FLOAT32_BYTES / gpu.h2d_bytes_s.value
        + 2.0 * w.lora_params * w.projection_dim * w.grad_passes / fp32
    )


# ----------------------------------------------------------------------------- GPU
def gpu_seconds(w: Work, gpu: k.Gpu, a: Assumptions) -> float:
    peak = gpu.fp32_flops.value if w.precision == "fp32" else gpu.bf16_flops.value
    load_s = a.vllm_startup_s if w.backend == "vllm" else a.hf_load_s_per_b_params * w.params / 1e9
    start = w.loads * load_s + w.merges * a.merge_s_per_b_params * w.params / 1e9
    if w.kind == "generate":
        return 0.0 if w.backend == "openai" else _generate_gpu(w, gpu, a) + start
    if w.kind == "train":
        return w.flops / (peak * a.train_mfu) + start
    if w.kind == "rate":
        return w.flops / (peak * a.rating_mfu) + w.ratings * a.rating_overhead_s + start
    if w.kind == "gradients":
        fp32 = gpu.fp32_flops.value * a.influence_fp32_efficiency
        return w.flops / fp32 + _projection_gpu(w, gpu, a) + start
    if w.kind == "sandbox":
        return sandbox_seconds(w, a)
    return 0.0  # api (paid in dollars), host (runs without a GPU)


def _generate_gpu(w: Work, gpu: k.Gpu, a: Assumptions) -> float:
    """Decoding at the vLLM figure scaled by 8B / parameters (capped); prompts at prefill FLOPs."""
    if not w.params:
        return 0.0
    speed = gpu.vllm_8b_tok_s.value * min(k.VLLM_REFERENCE_PARAMS.value / w.params, a.vllm_small_speedup_cap)
    if w.backend != "vllm":
        speed /= k.HF_VS_VLLM.value
    prefill = gpu.bf16_flops.value * a.prefill_mfu / (2.0 * w.params)
    return w.generated_tokens / speed + w.prompt_tokens / prefill


def sandbox_seconds(w: Work, a: Assumptions) -> float:
    """Programs at the measured rate (2 workers; more workers, proportionally faster) plus timeouts."""
    rate = k.CPU_SANDBOX_PROGRAMS_S.value * max(w.workers, 1) / 2
    return w.programs / rate + w.programs * a.timeout_fraction * w.timeout_s / max(w.workers, 1)


# ----------------------------------------------------------------------------- CPU
def cpu_seconds(w: Work, a: Assumptions, warnings: list[str]) -> float:
    if w.kind == "generate":
        if w.backend == "openai" or not w.sequences:
            return 0.0
        tps = _cpu_gen_rate(w.backend, w.batch, warnings)
        return w.generated_tokens / tps * _scale(w.params, a) + w.loads * k.CPU_MODEL_LOAD_S.value
    if w.kind == "train":
        if not w.trained_tokens:
            return 0.0
        per_token = _scale_flops(w.flops / w.trained_tokens, a)
        return w.trained_tokens / k.CPU_TRAIN_TOK_S.value * per_token + w.loads * k.CPU_TRAIN_SETUP_S.value
    if w.kind == "gradients":
        per_token = _scale_flops(w.flops / max(w.grad_tokens, 1.0), a)
        passes = w.grad_tokens / k.CPU_GRAD_TOK_S.value * per_token
        return passes + _projection_cpu(w) + w.loads * k.CPU_GRAD_SETUP_S.value
    if w.kind == "rate":
        if not w.ratings:
            return 0.0
        each = w.forward_tokens / w.ratings / k.CPU_RATING_TOKENS.value
        return w.ratings * k.CPU_RATING_S.value * each * _scale(w.params, a) + w.loads * k.CPU_MODEL_LOAD_S.value
    if w.kind == "sandbox":
        return sandbox_seconds(w, a)
    return w.host_s


def _scale(params: float, a: Assumptions) -> float:
    """Time relative to SmolLM2-135M: by parameters, at most `cpu_small_speedup_cap` faster."""
    return max(params / REF_PARAMS, 1.0 / a.cpu_small_speedup_cap) if params else 1.0


def _scale_flops(per_token: float, a: Assumptions) -> float:
    return max(per_token / REF_LORA_FLOPS, 1.0 / a.cpu_small_speedup_cap)


def _projection_cpu(w: Work) -> float:
    if w.projection == "none":
        return 0.0
    if w.projection == "sjlt":
        return w.grad_passes * w.lora_params * k.CPU_SJLT_NS.value * 1e-9
    blocks = w.shards * w.lora_params * w.projection_dim * k.CPU_PROJECTION_NS.value * 1e-9
    matmul = 2.0 * w.lora_params * w.projection_dim * w.grad_passes / (k.CPU_GRAD_TOK_S.value * REF_LORA_FLOPS)
    return blocks + matmul


def _cpu_gen_rate(backend: str, batch: int, warnings: list[str]) -> float:
    """Decoded tokens/s at this batch size, interpolated between the measured batch sizes."""
    table = k.CPU_GEN_TOK_S.get(backend)
    if table is None:
        note = f"CPU generation figures for backend '{backend}' are a placeholder: the transformers figures are used"
        if note not in warnings:
            warnings.append(note)
        table = k.CPU_GEN_TOK_S["transformers"] or {}
    points = sorted((b, c.value) for b, c in table.items())
    if batch <= points[0][0]:
        return points[0][1]
    for (b0, r0), (b1, r1) in zip(points, points[1:]):
        if batch <= b1:
            return r0 + (r1 - r0) * (batch - b0) / (b1 - b0)
    return points[-1][1]
