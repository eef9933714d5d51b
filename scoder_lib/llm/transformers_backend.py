"""Transformers generation backend (CPU default, GPU too): a hand-rolled batched decode loop.

Why not `model.generate`: on a 2-core CPU the wins are in what it does not do. We batch by length
with left padding and a KV cache, compute logits only for the last position, compute them as
`(W @ h.T).T` (small-row matmuls in nn.Linear are 1.2-2.3x slower on CPU), drop finished rows from
the batch, and seed every sample on its own so results do not depend on batch composition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from scoder_lib.core.config import ModelSpec
from scoder_lib.core.hashing import fingerprint
from scoder_lib.llm.base import Backend, Completion, GenRequest, GenResult, Row, prompt_ids, sample_seed
from scoder_lib.llm.models import ModelRef, load


@dataclass
class _Row(Row):
    gen: torch.Generator | None
    out: list[int] = field(default_factory=list)
    finish: str = "length"
    text: str | None = None


NUCLEUS_K = 512  # candidates for top-p sampling before falling back to a full sort
DECODER_VERSION = 2  # part of the cache key: bump when sampled outputs change for the same seed


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, ref: ModelRef, spec: ModelSpec):
        self.model, self.tok = load(ref, spec.dtype)
        self.batch_size = spec.batch_size
        # Two batches of requests a call: on a CPU a chunk of 64 sampled twice ran 10 minutes without a
        # progress line, and an interruption lost all of it. Outputs do not depend on the chunking.
        self.chunk_size = 2 * spec.batch_size
        self.fingerprint = fingerprint({"weights": ref.fingerprint, "dtype": spec.dtype, "decoder": DECODER_VERSION})
        self.device = next(self.model.parameters()).device
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos]) | {self.tok.eos_token_id}
        self.eos.discard(None)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else next(iter(self.eos))
        self._fast = _fast_path_ok(self.model)

    # ------------------------------------------------------------------ encoding
    def encode(self, req: GenRequest) -> list[int]:
        return prompt_ids(self.tok, req)

    # ------------------------------------------------------------------ public
    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        rows: list[_Row] = []
        encoded = [self.encode(req) for req in requests]
        for i, (req, ids) in enumerate(zip(requests, encoded)):
            # Greedy samples are identical: decode once, copy n times below.
            for s in range(1 if req.greedy else req.n):
                gen = None if req.greedy else torch.Generator().manual_seed(sample_seed(req.seed, s))
                rows.append(_Row(i, s, ids, req, gen))
        rows.sort(key=lambda r: -len(r.ids))  # length buckets: little padding per batch
        for start in range(0, len(rows), self.batch_size):
            self._decode(rows[start : start + self.batch_size])
        results = [GenResult([], len(ids)) for ids in encoded]
        for row in sorted(rows, key=lambda r: (r.req, r.sample)):
            results[row.req].completions.append(Completion(row.text or "", row.finish, len(row.out)))
        for req, res in zip(requests, results):
            if req.greedy and req.n > 1:
                res.completions = [Completion(**vars(res.completions[0])) for _ in range(req.n)]
        return results

    # ------------------------------------------------------------------ decoding
    @torch.inference_mode()
    def _decode(self, batch: list[_Row]) -> None:
        width = max(len(r.ids) for r in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for j, r in enumerate(batch):
            ids[j, width - len(r.ids) :] = torch.tensor(r.ids)
            mask[j, width - len(r.ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = _new_cache(self.model)
        logits = self._step(ids, mask, pos, cache)
        next_pos = pos[:, -1] + 1
        active = list(range(len(batch)))
        budget = max(r.request.max_new_tokens for r in batch)
        for _ in range(budget):
            tokens = self._choose(logits, [batch[j] for j in active])
            keep = [k for k, j in enumerate(active) if not self._append(batch[j], int(tokens[k]))]
            if not keep:
                break
            if len(keep) < len(active):
                idx = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(idx)
                mask, next_pos, tokens = mask[idx], next_pos[idx], tokens[idx]
                active = [active[k] for k in keep]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            logits = self._step(tokens[:, None], mask, next_pos[:, None], cache)
            next_pos = next_pos + 1
        for r in batch:
            if r.text is None:
                r.text = self.tok.decode(r.out, skip_special_tokens=True)

    def _step(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: Any) -> torch.Tensor:
        """Logits of the last position only."""
        if not self._fast:
            out = self.model(
                input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True, logits_to_keep=1
            )
            return out.logits[:, -1].float()
        hidden = self.model.get_decoder()(
            input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True
        ).last_hidden_state[:, -1]
        weight = self.model.get_output_embeddings().weight
        return (weight @ hidden.T).T.float()

    def _choose(self, logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
        greedy = logits.argmax(-1)
        sampled = [k for k, r in enumerate(rows) if r.gen is not None]
        if not sampled:
            return greedy
        out = greedy.clone()
        temps = torch.tensor([rows[k].request.temperature for k in sampled], device=logits.device)[:, None]
        probs = torch.softmax(logits[sampled].float() / temps, dim=-1).cpu()
        # Why top-k first: sorting 49k probabilities per row per step cost ~20% of decoding; the
        # nucleus nearly always lies in the top NUCLEUS_K, and when it does not we sort in full.
        vals, idx = probs.topk(min(NUCLEUS_K, probs.shape[-1]), dim=-1)
        cum = vals.cumsum(-1)
        for j, k in enumerate(sampled):
            r = rows[k]
            if r.request.top_p < 1.0 and float(cum[j, -1]) >= r.request.top_p:
                nucleus = torch.where(cum[j] - vals[j] > r.request.top_p, 0.0, vals[j])
                out[k] = idx[j, torch.multinomial(nucleus, 1, generator=r.gen)]
            else:
                out[k] = _sample(probs[j], r.request.top_p, r.gen)
        return out

    def _append(self, row: _Row, token: int) -> bool:
        """Add a token; True when the row is finished (EOS, stop string, or budget)."""
        if token in self.eos:
            row.finish = "stop"
            row.text = self.tok.decode(row.out, skip_special_tokens=True)
            return True
        row.out.append(token)
        if row.request.stop:
            text = self.tok.decode(row.out, skip_special_tokens=True)
            cut = min((text.find(s) for s in row.request.stop if s in text), default=-1)
            if cut >= 0:
                row.finish, row.text = "stop", text[:cut]
                return True
        return len(row.out) >= row.request.max_new_tokens


def _sample(probs: torch.Tensor, top_p: float, gen: torch.Generator) -> int:
    """Nucleus sampling over the full vocabulary (the slow path)."""
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        sorted_p = torch.where(sorted_p.cumsum(-1) - sorted_p > top_p, 0.0, sorted_p)
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=gen))


def _new_cache(model: Any) -> Any:

    return DynamicCache(config=model.config)


def _fast_path_ok(model: Any) -> bool:
    """The decoder + last-position matmul path is exact only for a plain, unscaled output layer."""
    cfg = model.config
    odd = any(
        getattr(cfg, a, None) not in (None, 1.0) for a in ("final_logit_softcapping", "logit_scale", "logits_scaling")
    )
    head = model.get_output_embeddings()
    return not odd and isinstance(head, torch.nn.Linear) and head.bias is None and hasattr(model, "get_decoder")
