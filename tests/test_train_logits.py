"""Training asks for logits only where the loss reads them: the same loss, gradients and checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from scoder_lib.method import train
from scoder_lib.method.train import Example, _Collate, encode, keeps_logits_by_mask, response_logits_only
from tests.conftest import train_micro


def _lora_micro(path: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    for name, p in model.named_parameters():  # B starts at zero: give it values so every LoRA weight has a gradient
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    return model


def _batch(path: str) -> dict[str, torch.Tensor]:
    tok = transformers.AutoTokenizer.from_pretrained(path)
    rows = [  # prompts and responses of different lengths: right padding, and prompts that end at different places
        Example.of([{"role": "user", "content": "Write add(a, b)."}], "def add(a, b):\n    return a + b"),
        Example.of([{"role": "user", "content": "A much longer prompt " * 6}], "ok"),
        Example.of([{"role": "user", "content": "q"}], "assert f(1) == 2\n" * 4),
    ]
    feats = [{**encode(tok, r, 256), "row": i} for i, r in enumerate(rows)]
    batch = _Collate(tok)(feats)
    batch.pop("row")
    return batch


def _loss_and_grads(model: torch.nn.Module, inputs: dict, **kw: object) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = model(**inputs, **kw).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(loss), grads


@pytest.mark.parametrize("num_items", [None, 17])
def test_trimmed_logits_give_the_same_loss_and_gradients(micro_ref, num_items):
    model, inputs = _lora_micro(micro_ref.path), _batch(micro_ref.path)
    kw = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    trimmed = response_logits_only(inputs)
    assert int(trimmed["logits_to_keep"].sum()) == int((inputs["labels"] != -100).sum()) < inputs["labels"].numel() // 2
    full_loss, full_grads = _loss_and_grads(model, inputs, **kw)
    trim_loss, trim_grads = _loss_and_grads(model, trimmed, **kw)
    assert trim_loss == pytest.approx(full_loss, rel=1e-6)
    assert full_grads.keys() == trim_grads.keys() and len(full_grads) > 0
    for name, g in full_grads.items():
        assert torch.allclose(trim_grads[name], g, rtol=1e-5, atol=1e-8), name


def test_trainer_trims_the_micro_model_and_trains_the_same(micro_ref, tmp_path: Path, monkeypatch):
    assert keeps_logits_by_mask(_lora_micro(micro_ref.path))
    trimmed = train_micro(micro_ref, tmp_path / "trimmed", n=6, num_checkpoints=1)
    monkeypatch.setattr(train, "keeps_logits_by_mask", lambda model: False)
    full = train_micro(micro_ref, tmp_path / "full", n=6, num_checkpoints=1)
    a, b = (load_file(str(c[-1] / "adapter_model.safetensors")) for c in (trimmed, full))
    assert a.keys() == b.keys()
    moved = [n for n in a if "lora_B" in n and a[n].abs().max() > 0]
    assert moved, "training left every LoRA B at zero: nothing compared"
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-7), name
