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
from scoder_lib.core.hashing import fingerprint
from scoder_lib.llm.base import GenRequest
from scoder_lib.llm.models import models_dir, prepare
from scoder_lib.llm.vllm_backend import VllmBackend, merged_checkpoint

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


def _run(lora: dict[str, Any], as_adapter: bool) -> tuple[str, list[list[str]]]:
    """(fingerprint, texts) of a fresh engine on the LoRA checkpoint; the engine is closed after."""
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
        return backend.fingerprint, [r.texts for r in backend.generate(REQUESTS)]
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
    fp, texts = _run(lora, as_adapter=False)
    assert fp == lora["reference"]["fingerprint"]
    assert texts == _texts(lora["reference"])
    merged = list(models_dir(Path(lora["cache"])).glob("merged-*"))
    assert [m.name for m in merged] == [f"merged-{lora['reference']['weights']}"]
    stamp = (merged[0] / "config.json").stat().st_mtime_ns
    ref = prepare(ModelSpec(name=str(lora["adapter"]), backend="vllm"), lora["cache"])
    assert merged_checkpoint(ref, models_dir(Path(lora["cache"]))) == merged[0]
    assert (merged[0] / "config.json").stat().st_mtime_ns == stamp  # cached: not merged twice


def test_lora_adapter_matches_transformers(lora: dict[str, Any]) -> None:
    fp, texts = _run(lora, as_adapter=True)
    assert fp == fingerprint({"weights": lora["reference"]["weights"], "dtype": "float32", "lora": "adapter"})
    assert fp != lora["reference"]["fingerprint"]
    assert texts == _texts(lora["reference"])
