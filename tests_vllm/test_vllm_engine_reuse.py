"""One engine serves the base and every adapter checkpoint of it (`lora_as_adapter`), even when the
checkpoints carry their own copy of the tokenizer (as `sft` saves them). No engine is started: the
engine class is replaced by a recorder, so this runs in seconds.

Found by `make rehearse`: the engine's tokenizer argument was the checkpoint folder, so each checkpoint
(and the base) started an engine of its own, about a minute each on a CPU.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from scoder_lib.core.config import ModelSpec, VllmOptions
from scoder_lib.llm import vllm_backend
from scoder_lib.llm.models import ModelRef

from .conftest import MODEL_DIR


class FakeLLM:
    started: list[dict[str, Any]] = []

    def __init__(self, **args: Any):
        FakeLLM.started.append(args)
        config = SimpleNamespace(try_get_generation_config=lambda: {"eos_token_id": 2})
        self.llm_engine = SimpleNamespace(model_config=config, engine_core=SimpleNamespace(shutdown=lambda: None))


def _checkpoint(folder: Path) -> Path:
    """An adapter folder as training saves it: adapter config plus the tokenizer's files."""
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "base_model_name_or_path": str(MODEL_DIR)}))
    for f in MODEL_DIR.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            shutil.copy(f, folder / f.name)
    return folder


def test_base_and_checkpoints_share_one_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (MODEL_DIR / "config.json").exists():
        pytest.skip(f"no model at {MODEL_DIR} (make model)")
    monkeypatch.setattr(vllm_backend, "LLM", FakeLLM)
    monkeypatch.setattr(vllm_backend, "_ENGINE", {})
    FakeLLM.started.clear()
    spec = ModelSpec(name="smollm2-135m-instruct", backend="vllm", vllm=VllmOptions(lora_as_adapter=True))
    refs = [ModelRef(str(MODEL_DIR), "base0")] + [
        ModelRef(str(_checkpoint(tmp_path / f"ckpt-{i}")), f"{i:07x}abc", base=str(MODEL_DIR)) for i in (1, 2)
    ]
    backends = [vllm_backend.VllmBackend(ref, spec, cache_dir=tmp_path) for ref in refs]
    assert len(FakeLLM.started) == 1, [a["tokenizer"] for a in FakeLLM.started]
    assert FakeLLM.started[0]["tokenizer"] == str(MODEL_DIR)
    assert [b.lora is None for b in backends] == [True, False, False]
    # prompts are still encoded with the checkpoint's own tokenizer, as the transformers backend does
    assert backends[1].tok.name_or_path == str(tmp_path / "ckpt-1")
