"""Projected gradient features per checkpoint and example set, cached on disk in shards (resumable)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import torch
import transformers
from peft import PeftModel

from scoder_lib.core.config import InfluenceOptions
from scoder_lib.core.hashing import fingerprint
from scoder_lib.core.io import atomic_path
from scoder_lib.core.logs import Progress, get_logger
from scoder_lib.llm.models import folder_fingerprint
from scoder_lib.method.influence.gradients import (
    Layout,
    Row,
    adam_direction,
    batched_grads,
    collate,
    layout_of,
    loop_grads,
)
from scoder_lib.method.influence.projection import Projector, l2_normalise
from scoder_lib.method.train import Example, encode, load_moments

log = get_logger(__name__)

FEATURES_VERSION = 1  # bump when a change alters feature values: it invalidates the cache
# Per-sample gradients are buffered (rows x parameters, float32) up to this size before one
# projection: block generation is paid once per buffer, and per sample the skinny GEMM costs
# several times less at hundreds of rows than at LESS's 16 (measured on the 2-core machine).
# At D=8192 a projection call costs ~P*D*2 ns for the blocks alone (10 s for P=650k).
SHARD_BYTES = 1 << 30
MAX_SHARD_ROWS = 512
Kind = Literal["adam", "sgd"]
Transform: TypeAlias = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Loaded:
    model: Any
    tok: Any
    layout: Layout
    key: str


_RESIDENT: list[Loaded] = []  # one model kept: candidates and targets of a checkpoint share it


def load_checkpoint(checkpoint: Path) -> Loaded:
    """Base + adapter as a trainable PeftModel in eval mode (dropout off), float32, on the GPU if any."""
    key = folder_fingerprint(checkpoint)
    if _RESIDENT and _RESIDENT[0].key == key:
        return _RESIDENT[0]

    base = json.loads((checkpoint / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(checkpoint), is_trainable=True).eval()
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    tok = transformers.AutoTokenizer.from_pretrained(
        str(checkpoint) if (checkpoint / "tokenizer_config.json").exists() else base
    )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    _RESIDENT[:] = [Loaded(model, tok, layout_of(model), key)]
    return _RESIDENT[0]


def examples_hash(examples: Sequence[Example]) -> str:
    return fingerprint([[list(e.messages), e.response] for e in examples])


def features_key(
    checkpoint: Path, examples: Sequence[Example], kind: Kind, opts: InfluenceOptions, max_seq_len: int
) -> str:
    """Cache key: exactly what determines the features (not `batched`: both ways agree to 1e-5)."""
    return fingerprint(
        {
            "v": FEATURES_VERSION,
            "checkpoint": folder_fingerprint(checkpoint),
            "examples": examples_hash(examples),
            "kind": kind,
            "dim": opts.projection_dim,
            "seed": opts.projection_seed,
            "max_seq_len": max_seq_len,
        }
    )


def gradient_features(
    checkpoint: Path,
    examples: list[Example],
    *,
    kind: Kind,
    opts: InfluenceOptions,
    max_seq_len: int,
    batched: bool = True,
    cache_dir: Path | None = None,
) -> np.ndarray:
    """n x D L2-normalised projected features: Adam directions (kind="adam") or gradients ("sgd").

    batched=False computes one sample per forward with the model's own loss (LESS's loop, the
    reference; opts.batch_size is then unused). With cache_dir, features are read from or written
    to it, shard by shard. Examples whose prompt alone exceeds max_seq_len get an all-zero row
    (cosine 0 to everything).
    """
    if kind not in ("adam", "sgd"):
        raise ValueError(f"kind must be 'adam' or 'sgd', got {kind!r}")
    final = None
    if cache_dir is not None:
        final = Path(cache_dir) / f"{kind}-{features_key(checkpoint, examples, kind, opts, max_seq_len)}.npy"
        if final.exists():
            return np.load(final)
    loaded = load_checkpoint(checkpoint)
    rows = _shard_rows(loaded.layout.total, opts.batch_size)
    parts = None if final is None else final.with_name(f"{final.stem}.parts-{rows}")
    encoded = [encode(loaded.tok, e, max_seq_len) for e in examples]
    if skipped := sum(r is None for r in encoded):
        log.warning("%d of %d examples do not fit max_seq_len=%d: zero features", skipped, len(encoded), max_seq_len)
    job = _Job(
        loaded,
        _transform(checkpoint, loaded.layout) if kind == "adam" else None,
        Projector(opts.projection_dim, opts.projection_seed),
        opts.batch_size if batched else 0,
        Progress(len(examples), f"{kind} gradient features of {checkpoint.name}", unit="samples"),
    )
    shards = [
        job.shard(encoded[s : s + rows], None if parts is None else parts / f"{i:05d}.npy")
        for i, s in enumerate(range(0, len(encoded), rows))
    ]
    feats = np.concatenate(shards) if shards else np.zeros((0, opts.projection_dim), np.float32)
    if final is not None:
        save_npy(final, feats)
        shutil.rmtree(parts, ignore_errors=True)
    return feats


def _shard_rows(n_params: int, batch_size: int) -> int:
    return max(batch_size, min(MAX_SHARD_ROWS, SHARD_BYTES // (4 * n_params)))


def _transform(checkpoint: Path, layout: Layout) -> Transform:
    """g -> Adam direction with this checkpoint's flattened moments (in layout order)."""

    m, v, meta = load_moments(checkpoint)
    missing = [n for n in layout.names if n not in m or n not in v]
    if missing:
        raise ValueError(f"{checkpoint}: no Adam moments for {missing[:3]} ({len(missing)} parameters)")
    device = layout.modules[0].weight.device
    exp_avg = torch.cat([m[n].reshape(-1).float() for n in layout.names]).to(device)
    exp_avg_sq = torch.cat([v[n].reshape(-1).float() for n in layout.names]).to(device)
    betas = tuple(meta.get("betas", (0.9, 0.999)))
    eps, step = float(meta.get("eps", 1e-8)), float(meta["adam_step"])
    return lambda g: adam_direction(g, exp_avg, exp_avg_sq, step, betas, eps)


@dataclass
class _Job:
    """What every shard of one gradient_features call shares."""

    loaded: Loaded
    transform: Transform | None  # None: plain gradients
    projector: Projector
    batch_size: int  # 0: LESS's one-sample loop
    progress: Progress

    def shard(self, encoded: list[Row | None], path: Path | None) -> np.ndarray:
        """Features of one shard: computed (longest first, so padding is small), or read back."""

        if path is not None and path.exists():
            self.progress.update(len(encoded))
            return np.load(path)
        buf = torch.zeros(
            len(encoded),
            self.loaded.layout.total,  # rows that do not fit stay zero
            device=self.loaded.layout.modules[0].weight.device,
        )
        order = sorted((i for i, r in enumerate(encoded) if r is not None), key=lambda i: -len(encoded[i]["input_ids"]))
        for s in range(0, len(order), self.batch_size or 1):
            idx = order[s : s + (self.batch_size or 1)]
            grads = _grads(self.loaded, [encoded[i] for i in idx], batched=self.batch_size > 0)
            buf[idx] = self.transform(grads) if self.transform is not None else grads
            self.progress.update(len(idx))
        self.progress.update(len(encoded) - len(order))
        feats = l2_normalise(self.projector.project(buf))
        if path is not None:
            save_npy(path, feats)
        return feats


def _grads(loaded: Loaded, rows: list[Row], batched: bool) -> torch.Tensor:
    if not batched:
        return loop_grads(loaded.model, loaded.layout, rows)
    device = loaded.layout.modules[0].weight.device
    return batched_grads(loaded.model, loaded.layout, collate(rows, loaded.tok.pad_token_id, device))


def save_npy(path: Path, array: np.ndarray) -> None:
    """np.save via a temp file and rename: a reader never sees half an array."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)
