"""How each generation engine runs a model (vLLM, llama.cpp, an OpenAI-compatible server): `ModelSpec`'s
per-backend options."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from scoder_lib.core.section import Section


class VllmOptions(Section):
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    # "ray" spans nodes (start a Ray cluster first); "mp" is one node.
    distributed_executor_backend: Literal["mp", "ray"] | None = None
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    enforce_eager: bool = False
    # torch.compile the model (None: on GPUs, not on CPUs, where compiling costs minutes per engine
    # start that a small run never wins back).
    compile: bool | None = None
    # Serve a LoRA checkpoint as an adapter instead of merging it into the base weights.
    lora_as_adapter: bool = False
    max_lora_rank: int = 64


class LlamaCppOptions(Section):
    workers: int = 2  # processes, `threads` each (1-thread workers, one per core: measured fastest)
    threads: int = 1
    slots: int = Field(16, ge=1)  # rows in flight per worker; > 1 puts workers and slots in the cache key
    n_ctx: int = 2048  # context per row: prompt + new tokens must fit
    weights: Literal["f16", "gguf"] = "f16"  # f16: LoRA merged into a cached float16 copy; gguf: file as is


class OpenAIOptions(Section):
    base_url: str = "https://api.openai.com/v1"
    # Name of the environment variable holding the key; the key itself never enters params or logs.
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 8
    timeout_s: float = 120.0
    max_retries: int = 6
    backoff_s: float = 1.0
    price_per_1m_input_usd: float = 0.0
    price_per_1m_output_usd: float = 0.0
