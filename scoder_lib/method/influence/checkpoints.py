"""Checkpoints for influence: one base model in memory, each checkpoint's LoRA weights and Adam moments swapped in."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import torch
import transformers
from peft import PeftModel, set_peft_model_state_dict
from peft.utils import load_peft_weights

from scoder_lib.core.hashing import fingerprint
from scoder_lib.llm.models import folder_fingerprint
from scoder_lib.method.influence.gradients import Layout, adam_direction, layout_of
from scoder_lib.method.influence.prefix import prefix_depth
from scoder_lib.method.train import load_moments

Transform: TypeAlias = Callable[[int, torch.Tensor], torch.Tensor]  # (offset, B x size block) -> same shape


@dataclass
class Loaded:
    model: Any
    tok: Any
    layout: Layout
    key: str  # the adapter's structure (base model, rank, targets, layers): what decides the model
    depth: int  # decoder layers below the first LoRA layer: the frozen prefix (0: none)
    active: str = ""  # fingerprint of the checkpoint whose weights the model holds

    @property
    def device(self) -> torch.device:
        return self.layout.modules[0].weight.device


_RESIDENT: list[Loaded] = []  # one model kept: every checkpoint of one structure shares it


def structure_key(checkpoint: Path) -> str:
    """Checkpoints with equal adapter configs (and so equal base and layout) share one loaded model."""
    return fingerprint(json.loads((Path(checkpoint) / "adapter_config.json").read_text()))


def load_checkpoint(checkpoint: Path) -> Loaded:
    """Base + adapter as a trainable PeftModel in eval mode (dropout off), float32, on the GPU if any.

    A resident model of the same structure is reused with this checkpoint's LoRA weights copied in.
    """
    key = structure_key(checkpoint)
    if not (_RESIDENT and _RESIDENT[0].key == key):
        _RESIDENT[:] = []  # free the old model before loading the next
        _RESIDENT.append(_load(Path(checkpoint), key))
    activate(_RESIDENT[0], Path(checkpoint))
    return _RESIDENT[0]


def _load(checkpoint: Path, key: str) -> Loaded:
    base = json.loads((checkpoint / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(checkpoint), is_trainable=True).eval()
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    tok = transformers.AutoTokenizer.from_pretrained(
        str(checkpoint) if (checkpoint / "tokenizer_config.json").exists() else base
    )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    layout = layout_of(model)
    return Loaded(model, tok, layout, key, prefix_depth(model, layout.modules), folder_fingerprint(checkpoint))


def activate(loaded: Loaded, checkpoint: Path) -> None:
    """Copy the checkpoint's LoRA weights into the resident model (nothing to do if they are there)."""
    stamp = folder_fingerprint(checkpoint)
    if loaded.active == stamp:
        return
    if structure_key(checkpoint) != loaded.key:
        raise ValueError(f"{checkpoint}: another adapter structure than the loaded model's")
    loaded.active = ""  # until the copy is complete
    result = set_peft_model_state_dict(loaded.model, load_peft_weights(str(checkpoint), device=str(loaded.device)))
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise ValueError(f"{checkpoint}: adapter weights do not fit: {(result.unexpected_keys or missing)[:3]}")
    loaded.active = stamp


def adam_transform(checkpoint: Path, layout: Layout, device: Any) -> Transform:
    """(offset, g) -> the Adam direction of g with this checkpoint's moments for those parameters."""

    m, v, meta = load_moments(checkpoint)
    missing = [n for n in layout.names if n not in m or n not in v]
    if missing:
        raise ValueError(f"{checkpoint}: no Adam moments for {missing[:3]} ({len(missing)} parameters)")
    exp_avg = torch.cat([m[n].reshape(-1).float() for n in layout.names]).to(device)
    exp_avg_sq = torch.cat([v[n].reshape(-1).float() for n in layout.names]).to(device)
    betas = tuple(meta.get("betas", (0.9, 0.999)))
    eps, step = float(meta.get("eps", 1e-8)), float(meta["adam_step"])

    def transform(offset: int, g: torch.Tensor) -> torch.Tensor:
        stop = offset + g.shape[1]
        return adam_direction(g, exp_avg[offset:stop], exp_avg_sq[offset:stop], step, betas, eps)

    return transform
