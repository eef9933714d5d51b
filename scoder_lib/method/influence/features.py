"""Projected gradient features per checkpoint and example set, cached on disk in shards (resumable)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from scoder_lib.core.config import InfluenceOptions
from scoder_lib.core.hashing import fingerprint
from scoder_lib.core.io import atomic_path
from scoder_lib.core.logs import Progress, get_logger
from scoder_lib.llm.models import folder_fingerprint
from scoder_lib.method.influence.checkpoints import Loaded, activate, adam_transform, load_checkpoint, structure_key
from scoder_lib.method.influence.gradients import Batch, Row, collate, grad_blocks, loop_grads
from scoder_lib.method.influence.prefix import Prefix, prefix_states
from scoder_lib.method.influence.projection import Projector, l2_normalise, make_projector
from scoder_lib.method.train import Example, encode

log = get_logger(__name__)

FEATURES_VERSION = 2  # bump when a change alters feature values: it invalidates the cache
MAX_SHARD_ROWS = 512  # samples per shard file: the unit of resumption
# A dense projection ("rademacher", or "none") buffers whole gradients (rows x parameters, float32)
# up to this size: its block generation is paid once per buffer. The sparse one streams instead.
SHARD_BYTES = 1 << 30
# The frozen prefix's states of one shard are kept (rows x tokens x hidden, float32) for all checkpoints.
PREFIX_BYTES = 1 << 30
Kind = Literal["adam", "sgd"]


def examples_hash(examples: Sequence[Example]) -> str:
    return fingerprint([[list(e.messages), e.response] for e in examples])


def features_key(
    checkpoint: Path, examples: Sequence[Example], kind: Kind, opts: InfluenceOptions, max_seq_len: int
) -> str:
    """Cache key: exactly what determines the features (not `batched`, the prefix or merged LoRA layers:
    all ways agree to 1e-5)."""
    return fingerprint(
        {
            "v": FEATURES_VERSION,
            "checkpoint": folder_fingerprint(checkpoint),
            "examples": examples_hash(examples),
            "kind": kind,
            "projection": opts.projection,
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
    """n x D L2-normalised projected features of one checkpoint (see `checkpoint_features`)."""
    return checkpoint_features(
        [checkpoint], examples, kind=kind, opts=opts, max_seq_len=max_seq_len, batched=batched, cache_dir=cache_dir
    )[0]


def checkpoint_features(
    checkpoints: list[Path],
    examples: list[Example],
    *,
    kind: Kind,
    opts: InfluenceOptions,
    max_seq_len: int,
    batched: bool = True,
    reuse_prefix: bool = True,
    merge_lora: bool = True,
    cache_dir: Path | None = None,
) -> list[np.ndarray]:
    """n x D L2-normalised projected features at each checkpoint: Adam directions ("adam") or gradients ("sgd").

    Checkpoints of one adapter structure share one loaded model, their LoRA weights swapped in; where
    LoRA starts above the first layer, the frozen layers below it run once per sample for all of
    them (reuse_prefix=False: not reused, for benchmarks); each LoRA layer runs as one merged matmul
    (merge_lora=False: PEFT's own forward, for benchmarks). batched=False computes one sample per
    forward with the model's own loss (LESS's loop, the reference; opts.batch_size then unused).
    With cache_dir, features are read from or written to it, shard by shard. Examples whose prompt
    alone exceeds max_seq_len get an all-zero row (influence 0, above every negative one): stage 04
    leaves out what training would not use whole first (`lineage.trainable`).
    """
    if kind not in ("adam", "sgd"):
        raise ValueError(f"kind must be 'adam' or 'sgd', got {kind!r}")
    finals = [
        None
        if cache_dir is None
        else Path(cache_dir) / f"{kind}-{features_key(c, examples, kind, opts, max_seq_len)}.npy"
        for c in checkpoints
    ]
    done = {i: np.load(f) for i, f in enumerate(finals) if f is not None and f.exists()}
    todo = [i for i in range(len(checkpoints)) if i not in done]
    for group in _by_structure(todo, checkpoints):
        job = _Job.start(
            checkpoints[group[0]], kind, opts, batched, reuse_prefix, merge_lora, len(examples) * len(group)
        )
        encoded = [encode(job.loaded.tok, e, max_seq_len) for e in examples]
        if skipped := sum(r is None for r in encoded):
            log.warning(
                "%d of %d examples do not fit max_seq_len=%d: zero features", skipped, len(encoded), max_seq_len
            )
        rows = _shard_rows(job, max_seq_len)
        parts = [None if finals[i] is None else finals[i].with_name(f"{finals[i].stem}.parts-{rows}") for i in group]
        shards = [
            job.shard(
                [checkpoints[i] for i in group],
                encoded[s : s + rows],
                [None if p is None else p / f"{k:05d}.npy" for p in parts],
            )
            for k, s in enumerate(range(0, len(encoded), rows))
        ]
        for j, i in enumerate(group):
            dim = shards[0][j].shape[1] if shards else opts.projection_dim
            done[i] = np.concatenate([s[j] for s in shards]) if shards else np.zeros((0, dim), np.float32)
            if finals[i] is not None:
                save_npy(finals[i], done[i])
                shutil.rmtree(parts[j], ignore_errors=True)
    return [done[i] for i in range(len(checkpoints))]


def _by_structure(todo: list[int], checkpoints: list[Path]) -> list[list[int]]:
    groups: dict[str, list[int]] = {}
    for i in todo:
        groups.setdefault(structure_key(checkpoints[i]), []).append(i)
    return list(groups.values())


def _shard_rows(job: _Job, max_seq_len: int) -> int:
    rows = MAX_SHARD_ROWS
    if job.projector.kind != "sjlt":
        rows = min(rows, SHARD_BYTES // (4 * job.loaded.layout.total))
    if job.reuse_prefix and job.loaded.depth:
        rows = min(rows, PREFIX_BYTES // (4 * max_seq_len * job.loaded.model.config.hidden_size))
    return max(job.batch_size, rows, 1)


@dataclass
class _Job:
    """What every shard of one checkpoint_features call (and adapter structure) shares."""

    loaded: Loaded
    kind: Kind
    projector: Projector
    batch_size: int  # 0: LESS's one-sample loop
    reuse_prefix: bool
    merge_lora: bool
    progress: Progress

    @classmethod
    def start(
        cls,
        first: Path,
        kind: Kind,
        opts: InfluenceOptions,
        batched: bool,
        reuse_prefix: bool,
        merge_lora: bool,
        total: int,
    ) -> _Job:
        projector = make_projector(opts.projection, opts.projection_dim, opts.projection_seed)
        progress = Progress(total, f"{kind} gradient features", unit="sample-checkpoints")
        batch_size = opts.batch_size if batched else 0
        return cls(load_checkpoint(first), kind, projector, batch_size, reuse_prefix, merge_lora, progress)

    def shard(self, checkpoints: list[Path], encoded: list[Row | None], paths: list[Path | None]) -> list[np.ndarray]:
        """One shard's features at each checkpoint: read back where its file exists, else computed.

        Longest samples first (little padding); the prefix states of every batch are computed once
        and kept while each checkpoint's weights are swapped in.
        """
        out = [np.load(p) if p is not None and p.exists() else None for p in paths]
        todo = [j for j, o in enumerate(out) if o is None]
        self.progress.update(len(encoded) * (len(out) - len(todo)))
        if not todo:
            return out
        order = sorted((i for i, r in enumerate(encoded) if r is not None), key=lambda i: -len(encoded[i]["input_ids"]))
        steps = [self._step([encoded[i] for i in idx], idx) for idx in _chunks(order, self.batch_size or 1)]
        for j in todo:
            activate(self.loaded, checkpoints[j])
            transform = (
                adam_transform(checkpoints[j], self.loaded.layout, self.loaded.device) if self.kind == "adam" else None
            )
            stream = self.projector.stream(len(encoded), self.loaded.layout.total, self.loaded.device)
            for step in steps:
                for offset, block in self._blocks(step):
                    stream.add(step.rows, offset, block if transform is None else transform(offset, block))
                self.progress.update(len(step.rows))
            self.progress.update(len(encoded) - len(order))
            out[j] = l2_normalise(stream.result())
            if paths[j] is not None:
                save_npy(paths[j], out[j])
        return out

    def _step(self, rows: list[Row], idx: list[int]) -> _Step:
        """A batch, collated, with its frozen-prefix states (where the path uses them)."""
        if not self.batch_size:
            return _Step(torch.tensor(idx), rows, None, None)
        batch = collate(rows, self.loaded.tok.pad_token_id, self.loaded.device)
        depth = self.loaded.depth if self.reuse_prefix else 0
        return _Step(
            torch.tensor(idx),
            rows,
            batch,
            prefix_states(self.loaded.model, depth, batch.input_ids, batch.attention_mask),
        )

    def _blocks(self, step: _Step) -> Iterator[tuple[int, torch.Tensor]]:
        if step.batch is None:  # LESS's loop: the model's own loss, whole vectors
            yield 0, loop_grads(self.loaded.model, self.loaded.layout, step.encoded)
        else:
            yield from grad_blocks(self.loaded.model, self.loaded.layout, step.batch, step.prefix, self.merge_lora)


@dataclass
class _Step:
    rows: torch.Tensor  # the samples' rows in the shard
    encoded: list[Row]
    batch: Batch | None  # None: one sample at a time (LESS's loop)
    prefix: Prefix | None


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for s in range(0, len(items), size):
        yield items[s : s + size]


def save_npy(path: Path, array: np.ndarray) -> None:
    """np.save via a temp file and rename: a reader never sees half an array."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)
