"""Digit ratings from the next-token distribution: P(0..9) for several questions about one text.

The text to rate is encoded once (a KV-cached prefix) and the Z questions reuse it as a batch of
suffixes, instead of Z full passes; `shared=False` does the Z full passes (the benchmark's baseline).
Probabilities are renormalised over the ten digit tokens, so no free text is ever parsed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import DynamicCache

from scoder_lib.core.config import ModelSpec
from scoder_lib.core.hashing import fingerprint
from scoder_lib.core.io import JsonlStore
from scoder_lib.core.logs import Progress, get_logger
from scoder_lib.llm.models import ModelRef, load, prepare

log = get_logger(__name__)
DIGITS = "0123456789"


@dataclass(frozen=True)
class RatingPrompt:
    """User turn = `text` + separator + one question; the assistant turn starts with `answer_prefix`."""

    system: str
    text: str
    questions: tuple[str, ...]
    answer_prefix: str = "Score: "
    separator: str = "\n\n"


class Rater:
    def __init__(self, ref: ModelRef, spec: ModelSpec, cache_dir: Path | None = None):
        self.model, self.tok = load(ref, spec.dtype)
        self.fingerprint = fingerprint({"weights": ref.fingerprint, "dtype": spec.dtype, "rater": 1})
        self.digit_ids = self._digit_ids()
        self.store = JsonlStore(cache_dir / "ratings" / f"{self.fingerprint}.jsonl") if cache_dir else None
        self.forward_tokens = 0  # tokens pushed through the model (what sharing saves)

    def _digit_ids(self) -> list[int]:
        ids = [self.tok(d, add_special_tokens=False)["input_ids"] for d in DIGITS]
        if any(len(i) != 1 for i in ids):
            raise ValueError("the scorer's tokenizer does not encode each digit 0-9 as one token")
        return [i[0] for i in ids]

    def _split(self, p: RatingPrompt) -> tuple[list[int], list[list[int]]]:
        """Token ids of the shared prefix (everything up to the question) and of each suffix."""
        suffixes, prefix_text = [], None
        for q in p.questions:
            msgs = [{"role": "system", "content": p.system}, {"role": "user", "content": f"{p.text}{p.separator}{q}"}]
            full = self.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) + p.answer_prefix
            cut = full.rindex(f"{p.separator}{q}")
            prefix_text = full[:cut]
            suffixes.append(self.tok(full[cut:], add_special_tokens=False)["input_ids"])
        return self.tok(prefix_text, add_special_tokens=False)["input_ids"], suffixes

    def rate(self, prompts: list[RatingPrompt], shared: bool = True, desc: str = "rating") -> list[np.ndarray]:
        """One (Z, 10) array of digit probabilities per prompt (cached on disk when a cache is set)."""
        out: list[np.ndarray] = []
        progress = Progress(len(prompts), desc, unit="texts")
        for p in prompts:
            key = fingerprint([p.system, p.text, list(p.questions), p.answer_prefix, p.separator])
            hit = self.store.get(key) if self.store is not None else None
            if hit is None:
                # rounded as stored: a rating served from the cache equals a fresh one exactly
                probs = self._rate_one(p, shared).round(7)
                if self.store is not None:
                    self.store.put(key, {"probs": probs.tolist()})
            else:
                probs = np.array(hit["probs"])
            out.append(probs)
            progress.update()
        return out

    @torch.inference_mode()
    def _rate_one(self, p: RatingPrompt, shared: bool) -> np.ndarray:
        prefix, suffixes = self._split(p)
        if not shared:
            rows = [self._last_logits([prefix + s]) for s in suffixes]
            return _digit_probs(torch.cat(rows), self.digit_ids)
        dec = self.model.get_decoder()
        cache = DynamicCache(config=self.model.config)
        ids = torch.tensor([prefix])
        dec(input_ids=ids, cache=cache, use_cache=True)
        self.forward_tokens += len(prefix) + sum(map(len, suffixes))
        cache.batch_repeat_interleave(len(suffixes))
        width = max(map(len, suffixes))
        pad = self.tok.pad_token_id or 0
        batch = torch.tensor([s + [pad] * (width - len(s)) for s in suffixes])  # right padding
        mask = torch.tensor([[1] * (len(prefix) + len(s)) + [0] * (width - len(s)) for s in suffixes])
        pos = torch.arange(len(prefix), len(prefix) + width).expand(len(suffixes), -1)
        hidden = dec(
            input_ids=batch, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True
        ).last_hidden_state
        last = torch.stack([hidden[i, len(s) - 1] for i, s in enumerate(suffixes)])
        return _digit_probs(self.model.get_output_embeddings()(last), self.digit_ids)

    def _last_logits(self, rows: list[list[int]]) -> torch.Tensor:
        self.forward_tokens += sum(map(len, rows))
        out = self.model(input_ids=torch.tensor(rows), logits_to_keep=1)
        return out.logits[:, -1]


def _digit_probs(logits: torch.Tensor, digit_ids: list[int]) -> np.ndarray:
    return torch.softmax(logits[:, digit_ids].double(), dim=-1).cpu().numpy()


def expected(probs: np.ndarray) -> np.ndarray:
    """Expected digit per row of a (Z, 10) probability array."""
    return probs @ np.arange(10)


def argmax(probs: np.ndarray) -> np.ndarray:
    return probs.argmax(-1)


def make_rater(spec: ModelSpec, cache_dir: Path, model_path: str | None = None) -> Rater:
    if spec.backend != "transformers":
        raise ValueError(
            f"the digit rater reads next-token probabilities from a local model: the scorer "
            f"'{spec.name}' must use backend 'transformers' (got '{spec.backend}')"
        )
    return Rater(
        prepare(spec if model_path is None else spec.model_copy(update={"name": model_path}), cache_dir),
        spec,
        cache_dir,
    )
