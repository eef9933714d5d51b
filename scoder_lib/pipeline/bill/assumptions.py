"""The bill's guesses in one table: how long outputs run, how many survive the filters, how efficient a GPU is.

Each is a number the run itself will measure; until then the bill uses these. Override any of them
on the command line (`--assume passed_rate_large=0.3`) to see what a different guess costs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from scoder_lib.core.config import ConfigError


@dataclass(frozen=True)
class Assumptions:
    # ------------------------------------------------------------------ lengths
    # Models below this size count as "small": their outputs run long and few of them parse.
    small_model_params: float = 1e9
    # Share of max_new_tokens a small base (untrained) synthesizer's sampled output fills.
    small_base_synth_fill: float = 0.62
    # Share of max_new_tokens a small student's greedy benchmark answer fills.
    small_bench_fill: float = 0.39
    # A trained synthesizer (and a large base one) writes about as much as the teacher did (x this factor).
    synth_len_factor: float = 1.0
    # Tokens of a large student's greedy benchmark answer (a fenced function; stops at the closing fence).
    large_bench_answer_tokens: float = 200.0
    # Prompt tokens of a BigCodeBench task (not on disk here; its docstrings are long).
    bigcodebench_prompt_tokens: float = 500.0
    # ------------------------------------------------------------------ yields
    # Share of synthesized samples that parse / pass their own tests, for small and large synthesizers.
    parsed_rate_small: float = 0.67
    passed_rate_small: float = 0.03
    parsed_rate_large: float = 0.9
    passed_rate_large: float = 0.5
    # Share of verdict-filtered final samples that survive deduplication and decontamination.
    dedup_survival: float = 0.95
    # Share of bought teacher samples that pass their own tests (every request is paid).
    teacher_valid_rate: float = 0.85
    # ------------------------------------------------------------------ sandbox
    # Share of programs that run into the timeout (each holds a worker for execution.timeout_s).
    timeout_fraction: float = 0.02
    # An EvalPlus "+" benchmark runs this many times longer per program than its base tests.
    plus_test_cost: float = 5.0
    # ------------------------------------------------------------------ GPU efficiency
    train_mfu: float = 0.35  # BF16 model-FLOPs utilisation of SFT (padded batches, HF Trainer)
    prefill_mfu: float = 0.5  # prompt processing under vLLM
    rating_mfu: float = 0.25  # the rater: one candidate at a time, eager transformers
    rating_overhead_s: float = 0.05  # per candidate on a GPU (Python, cache copies for the Z suffixes)
    influence_fp32_efficiency: float = 0.5  # share of FP32 peak the float32 per-sample gradients reach
    hbm_bytes_s: float = 3.0e12  # GPU memory bandwidth the sparse projection's scatter-adds reach
    # vLLM throughput scales with 8B / parameters, but small models hit CPU overheads: at most this factor.
    vllm_small_speedup_cap: float = 3.0
    vllm_startup_s: float = 90.0  # one vLLM engine start (weights, CUDA graphs), per model served
    hf_load_s_per_b_params: float = 10.0  # loading a model in transformers/peft on a GPU host, per 1e9 params
    merge_s_per_b_params: float = 20.0  # merging a LoRA checkpoint (float32) and saving it, per 1e9 params
    # ------------------------------------------------------------------ CPU
    # A model smaller than the measured SmolLM2-135M runs faster by its FLOPs ratio, at most this factor.
    cpu_small_speedup_cap: float = 5.0


DOCS: dict[str, str] = {
    "small_base_synth_fill": (
        "measured: base SmolLM2-135M on 8 synthesis prompts, T 0.7, 512 new tokens (scripts/measure_bill_constants.py)"
    ),
    "small_bench_fill": "measured: base SmolLM2-135M, 8 HumanEval prompts, greedy, 384 new tokens (same script)",
    "synth_len_factor": "guess: a synthesizer trained on teacher samples ends near their length",
    "large_bench_answer_tokens": "guess: a fenced solution of 100-300 tokens, cut at the closing fence",
    "bigcodebench_prompt_tokens": "guess: BigCodeBench's complete-split prompts are long docstrings",
    "parsed_rate_small": (
        "measured, tiny (compact task, 2026-11-30): iteration 1's candidates 64 of 96 parse, the enhanced "
        "synthesizer's held-out outputs 57 of 80 (the long v1 task: 1 of 12)"
    ),
    "passed_rate_small": "measured, same run: 3 of 80 held-out outputs and 0 of 96 candidates pass their own tests",
    "parsed_rate_large": "guess for a 7B synthesizer trained on the teacher's format",
    "passed_rate_large": "guess: about half of a 7B synthesizer's samples pass their own tests",
    "dedup_survival": "guess",
    "teacher_valid_rate": "guess (the committed seed set is 200/200 valid after curation)",
    "timeout_fraction": "guess",
    "plus_test_cost": "guess: EvalPlus '+' tests hold tens to hundreds of inputs per task",
    "train_mfu": (
        "below Llama 3's 38-43% BF16 MFU on H100 (arXiv:2407.21783, Table 4) and packed FSDP SFT of "
        "Qwen2.5-7B at 50-55% (lmms-engine.readthedocs.io/en/stable/reference/mfu.html): our Trainer pads"
    ),
    "prefill_mfu": "guess: prompt processing is one large matmul per layer",
    "rating_mfu": "guess: batch 1, ~1,000-token prefix, eager attention",
    "rating_overhead_s": "guess",
    "influence_fp32_efficiency": "guess: large float32 matmuls reach about half of the FP32 (non-tensor-core) peak",
    "hbm_bytes_s": "guess: about 90% of an H100's 3.35 TB/s (datasheet); scatter-adds with atomics may reach less",
    "vllm_small_speedup_cap": "guess: vLLM v0.5 was CPU-bound already at 8B (blog.vllm.ai/2024/09/05/perf-update.html)",
    "vllm_startup_s": "guess: loading 15 GB of weights and capturing CUDA graphs",
    "hf_load_s_per_b_params": "guess: float32 weights from local disk at 1-2 GB/s, plus building the model",
    "merge_s_per_b_params": "guess: float32 merge_and_unload and save_pretrained",
    "cpu_small_speedup_cap": "guess: per-step Python overhead bounds the speed-up of very small models",
    "small_model_params": "convention: SmolLM2-135M and the micro model are small; 7B models are large",
}


def with_overrides(base: Assumptions, pairs: list[str]) -> Assumptions:
    """`base` with NAME=VALUE overrides; an unknown name fails loudly, listing the known ones."""
    known = {f.name for f in dataclasses.fields(Assumptions)}
    changes: dict[str, float] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name.strip() not in known:
            raise ConfigError(f"--assume {pair!r}: expected NAME=VALUE with NAME one of {', '.join(sorted(known))}")
        changes[name.strip()] = float(value)
    return dataclasses.replace(base, **changes)


def table(a: Assumptions) -> list[dict[str, object]]:
    """Every assumption with its value and where it comes from (for the JSON and the docs)."""
    return [
        {"name": f.name, "value": getattr(a, f.name), "source": DOCS.get(f.name, "guess")}
        for f in dataclasses.fields(Assumptions)
    ]
