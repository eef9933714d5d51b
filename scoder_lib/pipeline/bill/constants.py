"""The bill's measured and published constants, each with its value, unit and source.

GPU figures come from NVIDIA's datasheets and a published vLLM benchmark; CPU figures were measured
on the 2-core reference machine with `scripts/measure_bill_constants.py` (re-run it on a quiet
machine and paste its output here). Guesses live in `assumptions`, not here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Constant:
    value: float
    unit: str
    source: str


@dataclass(frozen=True)
class Gpu:
    name: str
    bf16_flops: Constant  # dense tensor-core peak
    fp32_flops: Constant  # plain FP32 (torch keeps TF32 off for float32 matmuls by default)
    vllm_8b_tok_s: Constant  # output tokens/s of an 8B model under vLLM on one GPU, large batches
    h2d_bytes_s: Constant  # host-to-device copy bandwidth


_H100 = "NVIDIA H100 datasheet, SXM column (www.nvidia.com/en-us/data-center/h100/)"
_A100 = "NVIDIA A100 datasheet, 80GB SXM column (www.nvidia.com/en-us/data-center/a100/)"
_H200 = "NVIDIA H200 datasheet (www.nvidia.com/en-us/data-center/h200/): H100's Hopper compute, 4.8 TB/s HBM3e"
_LAMBDA = (
    "Lambda, 'LLMs inference benchmarks, using vLLM' (github.com/LambdaLabsML/vllm-benchmark, benchmark_v0.md): "
    "Llama 3.1 8B, 1x H100 80GB SXM, vLLM v0.6.0, --num-scheduler-steps 10, 5,000 prompts, max-seq-len 2048"
)
H100_VLLM = 8088.35
GPUS: dict[str, Gpu] = {
    "H100": Gpu(
        "H100 80GB SXM",
        Constant(989e12, "FLOP/s", f"{_H100}: BF16 1,979 TFLOPS with sparsity, half dense"),
        Constant(67e12, "FLOP/s", f"{_H100}: FP32 67 TFLOPS"),
        Constant(H100_VLLM, "output tokens/s", _LAMBDA),
        Constant(64e9, "bytes/s", f"{_H100}: PCIe Gen5 128 GB/s, both directions together"),
    ),
    "A100": Gpu(
        "A100 80GB SXM",
        Constant(312e12, "FLOP/s", f"{_A100}: BF16 312 TFLOPS dense"),
        Constant(19.5e12, "FLOP/s", f"{_A100}: FP32 19.5 TFLOPS"),
        Constant(
            H100_VLLM / 2.06,
            "output tokens/s",
            "the H100 figure / 2.06, the H100:A100 vLLM throughput ratio for Mistral-7B in the same Lambda report",
        ),
        Constant(32e9, "bytes/s", f"{_A100}: PCIe Gen4 64 GB/s, both directions together"),
    ),
    "H200": Gpu(
        "H200 141GB SXM",
        Constant(989e12, "FLOP/s", _H200),
        Constant(67e12, "FLOP/s", _H200),
        Constant(
            H100_VLLM * 4.8 / 3.35,
            "output tokens/s",
            "the H100 figure x 4.8/3.35, the HBM bandwidth ratio (decoding reads every weight): an upper bound",
        ),
        Constant(64e9, "bytes/s", _H200),
    ),
}
VLLM_REFERENCE_PARAMS = Constant(8.03e9, "parameters", "Llama 3.1 8B (the model behind the vLLM figure)")
HF_VS_VLLM = Constant(
    24.0,
    "x",
    "vLLM's launch post (blog.vllm.ai/2023/06/20/vllm.html): up to 24x the throughput of HF transformers; "
    "used for generation on a GPU through the transformers backend",
)

# ----------------------------------------------------------------------------- CPU (reference machine)
MEASURED = (
    "measured here, 2026-11-30, 2 cores x86-64 (AVX2), torch 2.13 CPU, machine loaded by other work (load 7-9): "
    "CPU time / 2 threads, `PYTHONPATH=. python scripts/measure_bill_constants.py`"
)
CHARS_PER_TOKEN = Constant(
    3.21,
    "characters/token",
    f"{MEASURED}: SmolLM2's tokenizer on the seed set's snippets and responses and HumanEval's prompts "
    "(per kind 2.8-3.7; Qwen2.5 and DeepSeek-Coder tokenizers are within ~10% on code)",
)
PROSE_CHARS_PER_TOKEN = Constant(
    4.8,
    "characters/token",
    f"{MEASURED}: the synthesis prompt templates without the snippet (v1 4.93, v2 4.67) and the rubric's questions "
    "(4.4): the fixed English text around the code",
)
CHAT_OVERHEAD_TOKENS = Constant(14.0, "tokens/prompt", f"{MEASURED}: SmolLM2's chat template, system + user turn")
# Decoded tokens/s of SmolLM2-135M by batch size (synthesis prompts, ~400 prompt tokens), per backend.
CPU_GEN_TOK_S: dict[str, dict[int, Constant] | None] = {
    "transformers": {
        1: Constant(13.5, "tokens/s", f"{MEASURED} (batch 1, 96 new tokens)"),
        8: Constant(28.4, "tokens/s", f"{MEASURED} (batch 8, up to 512 new tokens, sampled: rows end unevenly)"),
        16: Constant(41.3, "tokens/s", f"{MEASURED} (batch 16, up to 256 new tokens, sampled)"),
    },
    # Keyed by the backend's name in ModelSpec.backend. One figure for llama.cpp: its defaults (2 workers
    # x 1 thread x 16 slots, float16 weights with the LoRA merged) keep the batch full, whatever the call.
    "llamacpp": {
        1: Constant(
            53.0,
            "tokens/s",
            "measured here, 2026-11-30, 2 cores x86-64 (AVX2), llama-cpp-python 0.3.36, quiet machine: "
            "`scripts/bench_generation.py --n 64 --adapter <tiny's enhanced synthesizer>` (64 held-out compact "
            "prompts, T 0.8, top_p 0.95, <= 320 new tokens), 15,247 tokens in 287.7 s, beside 33.1 tok/s for "
            "the transformers backend at batch 16 in the same run (1.60x)",
        ),
    },
}
TRAIN_MEASURED = (
    "measured here, 2026-12-01, 2 cores x86-64 (AVX2), torch 2.13 CPU, quiet (load ~1.7), logits at response "
    "positions only: CPU time / 2 threads, `PYTHONPATH=. python scripts/measure_bill_constants.py --only train`"
)
CPU_TRAIN_TOK_S = Constant(
    190.0,
    "trained tokens/s",
    f"{TRAIN_MEASURED}: LoRA r 32 on SmolLM2's last 8 of 30 layers, batch 4, ~910-token examples (4 steps minus 1 "
    "step); 153 before training skipped the prompt positions' logits",
)
CPU_TRAIN_SETUP_S = Constant(
    3.3, "s/training", f"{TRAIN_MEASURED}: one step minus the per-step cost (Trainer, LoRA, dataset)"
)
CPU_GRAD_TOK_S = Constant(
    174.0,
    "tokens/s",
    f"{MEASURED}: per-sample gradient features, same LoRA, batch 4, 16-dim projection (the pass alone)",
)
CPU_GRAD_SETUP_S = Constant(
    1.0, "s/checkpoint", f"{MEASURED}: loading a checkpoint and its moments (within noise of 0)"
)
CPU_PROJECTION_NS = Constant(
    1.1,
    "ns per (LoRA parameter x dimension)",
    f"{MEASURED}: the projection's +-1 block generation (numpy PCG64), three runs 0.95-1.29",
)
CPU_SJLT_NS = Constant(
    3.6,
    "ns per (LoRA parameter x sample)",
    f"{MEASURED}: the sparse JL projection (scripts/bench_influence.py, P = 1e8 and 3.2e8, codes cached)",
)
SJLT_BYTES_PER_PARAM = Constant(
    10.0,
    "bytes moved per (LoRA parameter x sample) on a GPU",
    "from the algorithm: the gradient read (4), its hash code (5), the scatter-add (~1, amortised)",
)
CPU_FIT_STEP_S = Constant(
    2.8e-5, "s/gradient step", f"{MEASURED}: the aspect-weight logistic fit, 12 rows (numpy, one thread)"
)
CPU_FIT_STEP_ROW_S = Constant(2.9e-8, "s/(step x row)", f"{MEASURED}: the same fit at 1,000 rows: the per-row part")
CPU_RATING_S = Constant(
    4.96, "s/candidate", f"{MEASURED}: SmolLM2 digit rater, Z=5 aspects, shared prefix, 3 seed samples"
)
CPU_RATING_TOKENS = Constant(1465.0, "tokens/candidate", f"{MEASURED}: the same three candidates")
CPU_SANDBOX_PROGRAMS_S = Constant(
    70.9, "programs/s", f"{MEASURED}: 100 seed programs (solution + own asserts), 2 workers, wall time under load"
)
CPU_IMPORT_S = Constant(4.3, "s/stage", f"{MEASURED}: importing torch, transformers and peft (CPU time / 2)")
CPU_MODEL_LOAD_S = Constant(0.58, "s/load", f"{MEASURED}: SmolLM2-135M float32 from the prepared folder")
KERNEL_START_S = Constant(5.0, "s/stage", "guess: papermill starting a kernel and saving the executed notebook")
REPORT_S = Constant(12.0, "s/stage", "docs/runs.md, the first tiny run (2026-11-26): the whole 07 report stage on tiny")
PREPROCESS_S_PER_FILE = Constant(
    0.0156, "s/source file", "docs/runs.md, the first tiny run (2026-11-26): the whole 01 stage, 1,790 files in 28 s"
)
STDLIB_FILES = Constant(1790.0, "files", "docs/runs.md, the first tiny run: the standard library's mined files")
BENCH_PROMPT_TOKENS = {
    "humaneval": Constant(140.0, "tokens", f"{MEASURED}: HumanEval+ prompts (164 tasks)"),
    "mbpp+": Constant(56.0, "tokens", f"{MEASURED}: MBPP+ prompts (378 tasks)"),
}
BENCH_TASKS: dict[str, int | None] = {
    "humaneval": 164,
    "humaneval+": 164,
    "mbpp": 378,
    "mbpp+": 378,
    "bigcodebench": 1140,
    "livecodebench": None,  # depends on the release files configured: not known before the run
}
# Benchmarks whose prompts another benchmark already generated: the generation cache serves them.
SHARES_PROMPTS = {"humaneval+": "humaneval", "mbpp": "mbpp+"}


def table(gpu: Gpu) -> list[dict[str, object]]:
    """Every constant the bill uses (the chosen GPU's, and the CPU ones) as name, value, unit, source."""
    rows: list[tuple[str, Constant]] = [
        (f"{gpu.name}: {name}", getattr(gpu, name))
        for name in ("bf16_flops", "fp32_flops", "vllm_8b_tok_s", "h2d_bytes_s")
    ]
    for name, value in globals().items():
        if isinstance(value, Constant):
            rows.append((name, value))
        elif isinstance(value, dict) and name.isupper():
            rows += [(f"{name}[{key}]", c) for key, c in value.items() if isinstance(c, Constant)]
            rows += [
                (f"{name}[{key}][{b}]", c)
                for key, sub in value.items()
                if isinstance(sub, dict)
                for b, c in sub.items()
            ]
    return [{"name": n, "value": c.value, "unit": c.unit, "source": c.source} for n, c in rows]
