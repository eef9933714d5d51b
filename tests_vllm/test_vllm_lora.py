"""LoRA checkpoints in the vLLM backend: merged into the base (default, cached by fingerprint) and
served as an adapter (`lora_as_adapter`), both against the transformers backend (which merges).

Both engines run eager (`enforce_eager`): vLLM's CPU build turns compilation off for LoRA anyway,
and for the merged model it saves the ~2 min compile that test_vllm_backend already covers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scoder_lib.core.config import ModelSpec, VllmOptions
from scoder_lib.llm.base import GenRequest
from scoder_lib.llm.generator import Generator
from scoder_lib.llm.models import models_dir, prepare
from scoder_lib.llm.vllm_backend import VllmBackend, cache_key, merged_checkpoint

from .conftest import CHAT, GREEDY, MODEL_DIR, main_venv, run_reference

REQUESTS = [
    GenRequest.chat([{"role": "user", "content": c}], GREEDY.model_copy(update={"max_new_tokens": 32}))
    for c in CHAT[:4]
]


@pytest.fixture(scope="module")
def lora(spec: ModelSpec, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("lora")
    adapter = tmp / "adapter"
    main_venv("lora", str(MODEL_DIR), str(adapter))
    return {
        "adapter": adapter,
        "cache": tmp / "cache",
        "reference": run_reference(tmp, str(adapter), REQUESTS, tmp / "cache"),
    }


def _run(lora: dict[str, Any], as_adapter: bool) -> tuple[str, list[list[str]], str]:
    """(fingerprint, texts, generation cache file name) of a fresh engine on the LoRA checkpoint;
    the engine is closed after."""
    spec = ModelSpec(
        name=str(lora["adapter"]),
        backend="vllm",
        dtype="float32",
        vllm=VllmOptions(lora_as_adapter=as_adapter, enforce_eager=True, max_lora_rank=8),
    )
    ref = prepare(spec, lora["cache"])
    assert ref.base == str(MODEL_DIR)
    backend = VllmBackend(ref, spec, cache_dir=lora["cache"])
    try:
        cache_file = Generator(backend, lora["cache"]).store.path.name
        return backend.fingerprint, [r.texts for r in backend.generate(REQUESTS)], cache_file
    finally:
        backend.close()


def _texts(ref: dict[str, Any]) -> list[list[str]]:
    return [[c["text"] for c in o["result"]["completions"]] for o in ref["outputs"]]


def test_adapter_changes_outputs(lora: dict[str, Any], reference: dict[str, Any]) -> None:
    """Else the tests below prove nothing. The base model's 48-token outputs (session reference,
    same prompts; request 1 there has a system turn) must not all start with the LoRA's 32 tokens."""
    base = [o["result"]["completions"][0]["text"] for o in reference["outputs"]]
    lora_texts = [t[0] for t in _texts(lora["reference"])]
    assert not all(base[i].startswith(lora_texts[i]) for i in (0, 2, 3))


def test_lora_merged_matches_transformers(lora: dict[str, Any]) -> None:
    fp, texts, cache_file = _run(lora, as_adapter=False)
    assert fp == cache_key(
        lora["reference"]["weights"], "float32"
    )  # the checkpoint's weights, as the main venv has them
    assert cache_file != lora["reference"]["cache_file"]  # not the transformers backend's cache
    assert texts == _texts(lora["reference"])
    merged = list(models_dir(Path(lora["cache"])).glob("merged-*"))
    assert [m.name for m in merged] == [f"merged-{lora['reference']['weights']}"]
    stamp = (merged[0] / "config.json").stat().st_mtime_ns
    ref = prepare(ModelSpec(name=str(lora["adapter"]), backend="vllm"), lora["cache"])
    assert merged_checkpoint(ref, models_dir(Path(lora["cache"]))) == merged[0]
    assert (merged[0] / "config.json").stat().st_mtime_ns == stamp  # cached: not merged twice


def test_lora_adapter_matches_transformers(lora: dict[str, Any]) -> None:
    fp, texts, cache_file = _run(lora, as_adapter=True)
    assert fp == cache_key(lora["reference"]["weights"], "float32", adapter=True)
    # Adapter serving rounds differently from the merged weights: its own cache, apart from both.
    assert fp != cache_key(lora["reference"]["weights"], "float32")
    assert cache_file != lora["reference"]["cache_file"]
    assert texts == _texts(lora["reference"])
