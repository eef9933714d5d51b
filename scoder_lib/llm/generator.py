"""The cached generation front every stage uses, and the factory that picks a backend for a model spec."""

from __future__ import annotations

from pathlib import Path

from scoder_lib.core.config import ModelSpec
from scoder_lib.core.io import JsonlStore
from scoder_lib.core.logs import Progress, get_logger
from scoder_lib.llm import models
from scoder_lib.llm.base import Backend, GenRequest, GenResult, require_backend
from scoder_lib.llm.worker import WorkerBackend

log = get_logger(__name__)


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
            log.info(
                "%s: %d requests, %d cached, %d to generate with %s",
                desc,
                len(requests),
                len(requests) - len(todo),
                len(todo),
                self.backend.name,
            )
            progress = Progress(len(todo), desc, unit="requests")
            step = self.backend.chunk_size
            for start in range(0, len(todo), step):
                chunk = todo[start : start + step]
                results = self.backend.generate([requests[i] for _, i in chunk])
                self.model_calls += len(chunk)
                self.store.put_many({k: res.to_json() for (k, _), res in zip(chunk, results)})
                progress.update(len(chunk))
        return [GenResult.from_json(self.store.get(k)) for k in keys]  # type: ignore[arg-type]


def make_backend(spec: ModelSpec, cache_dir: Path, model_path: str | None = None) -> Backend:
    """Instantiate the backend a spec names; `model_path` overrides the spec's model (a checkpoint)."""
    require_backend(spec, "model spec")
    if spec.python is not None:
        return WorkerBackend(spec, cache_dir, model_path)
    if spec.backend == "llamacpp":
        from scoder_lib.llm.llamacpp_backend import LlamaCppBackend  # noqa: PLC0415 - optional llama-cpp-python

        return LlamaCppBackend(spec, cache_dir, model_path)
    ref = models.prepare(spec if model_path is None else spec.model_copy(update={"name": model_path}), cache_dir)
    if spec.backend == "transformers":
        # Lazy on purpose: each backend pulls its own heavy stack; a stage loads only the one it uses.
        from scoder_lib.llm.transformers_backend import TransformersBackend  # noqa: PLC0415

        return TransformersBackend(ref, spec)
    if spec.backend == "vllm":
        from scoder_lib.llm.vllm_backend import VllmBackend  # noqa: PLC0415 - vLLM: optional, own venv

        return VllmBackend(ref, spec, cache_dir=cache_dir)
    from scoder_lib.llm.openai_backend import OpenAIBackend  # noqa: PLC0415

    return OpenAIBackend(spec)


def generator(spec: ModelSpec, cache_dir: Path, model_path: str | None = None) -> Generator:
    return Generator(make_backend(spec, cache_dir, model_path), cache_dir)
