"""Optimizer-aware gradient influence (LESS, Xia et al. 2024), as SCoder uses it to pick samples.

For each checkpoint c of the previous synthesizer (a LoRA adapter saved with its Adam moments):
  1. per-sample LoRA gradients of the SFT loss (each sample's own mean over its response tokens)
     for every candidate (training side) and every teacher sample (target side), one backward per
     batch (`gradient_features`);
  2. candidates become Adam update directions with c's moments (`adam_direction`); targets stay
     plain gradients;
  3. both are reduced by a seeded Rademacher projection to D dims (`Projector`) and L2-normalised;
  4. influence(i) = sum_c avg_lr_c * mean_j cos(adam_c(i), grad_c(target j)), or max_j
     (`influence_scores`).

    scores = influence(checkpoints, candidates, teacher_examples, opts=cfg.influence, max_seq_len=...)

Features are cached on disk per (checkpoint, examples, kind, D, seed, max_seq_len), in shards
written atomically as they finish, so an interrupted stage resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np

from .config import InfluenceOptions, fingerprint
from .io import atomic_path
from .logs import Progress, get_logger
from .models import folder_fingerprint
from .train import IGNORE, Example, encode, load_moments

if TYPE_CHECKING:
    import torch

log = get_logger(__name__)

FEATURES_VERSION = 1  # bump when a change alters feature values: it invalidates the cache
CHUNK_ROWS = 2048  # parameter rows per projection block: a block is CHUNK_ROWS x D float32
# Per-sample gradients are buffered (rows x parameters, float32) up to this size before one
# projection: block generation is paid once per buffer, and per sample the skinny GEMM costs
# several times less at hundreds of rows than at LESS's 16 (measured on the 2-core machine).
# At D=8192 a projection call costs ~P*D*2 ns for the blocks alone (10 s for P=650k).
SHARD_BYTES = 1 << 30
MAX_SHARD_ROWS = 512
Kind = Literal["adam", "sgd"]
Row = dict[str, list[int]]  # train.encode's output: input_ids, labels, attention_mask
Transform: TypeAlias = "Callable[[torch.Tensor], torch.Tensor]"


# ----------------------------------------------------------------------------- projection
class Projector:
    """Seeded Rademacher projection R (parameters x dim, entries +-1/sqrt(dim)), applied in chunks.

    R is never materialised: the block of rows [k*CHUNK_ROWS, (k+1)*CHUNK_ROWS) is regenerated on
    the fly from numpy's PCG64 seeded with (seed, k), one random bit per entry (stream-stable
    across platforms and numpy versions). Caching blocks is not cheap: at D=8192 they weigh 32 KiB
    per parameter, 21 GB for the 650k LoRA parameters of SmolLM2's last 4 layers.
    """

    def __init__(self, dim: int, seed: int, chunk_rows: int = CHUNK_ROWS):
        if dim <= 0 or seed < 0:
            raise ValueError(f"projection needs dim > 0 and seed >= 0, got dim={dim}, seed={seed}")
        self.dim, self.seed, self.chunk_rows = dim, seed, chunk_rows
        self._words: np.ndarray | None = None  # reused block buffer: fresh pages cost more than filling

    def project(self, vectors: Any) -> np.ndarray:
        """n x dim projection of n vectors, given whole (n x P) or as consecutive pieces (n x P_k).

        Pieces may be a sequence or a mapping (e.g. by parameter name, in its iteration order);
        projecting pieces equals projecting their concatenation.
        """
        import torch

        pieces = [torch.as_tensor(p, dtype=torch.float32) for p in _pieces(vectors)]
        bounds, device = np.cumsum([0] + [p.shape[1] for p in pieces]), pieces[0].device
        out_t = torch.zeros(self.dim, pieces[0].shape[0], device=device)  # transposed: MKL ran this faster
        for k, start in enumerate(range(0, int(bounds[-1]), self.chunk_rows)):
            stop = min(start + self.chunk_rows, int(bounds[-1]))
            block = self._block_t(k, stop - start).to(device)  # generated on the CPU: same bits everywhere
            out_t.addmm_(block, _columns(pieces, bounds, start, stop).T)
        return (out_t.T / math.sqrt(self.dim)).cpu().numpy()

    def matrix(self, n_params: int) -> np.ndarray:
        """The dense n_params x dim matrix (tests only: it is what `project` multiplies by)."""
        blocks = [self._block_t(k, min(self.chunk_rows, n_params - s)).numpy().T.copy()
                  for k, s in enumerate(range(0, n_params, self.chunk_rows))]
        return np.concatenate(blocks) / math.sqrt(self.dim)

    def _block_t(self, k: int, rows: int) -> torch.Tensor:
        """Chunk k's +-1 block, transposed (dim x rows, float32), from PCG64 seeded (seed, k)."""
        import torch

        n_words = -(-rows * self.dim // 32)
        raw = np.random.default_rng([self.seed, k]).bit_generator.random_raw(-(-n_words // 2))
        words = raw.astype("<u8", copy=False).view("<u4")[:n_words]
        if self._words is None:
            self._words = np.empty((-(-self.chunk_rows * self.dim // 32), 32), dtype=np.uint32)
        bits = self._words[:n_words]
        # Each random bit becomes a float32 sign bit over the pattern of 1.0: no float arithmetic.
        np.left_shift(words[:, None], _SHIFTS, out=bits)
        np.bitwise_and(bits, np.uint32(0x80000000), out=bits)
        np.bitwise_or(bits, np.uint32(0x3F800000), out=bits)
        return torch.from_numpy(bits.view(np.float32).reshape(-1)[: rows * self.dim].reshape(self.dim, rows))


_SHIFTS = (31 - np.arange(32)).astype(np.uint32)


def _pieces(vectors: Any) -> list[Any]:
    if isinstance(vectors, Mapping):
        vectors = list(vectors.values())
    if not isinstance(vectors, (list, tuple)):
        vectors = [vectors]
    pieces = [v if v.ndim == 2 else v.reshape(1, -1) for v in vectors]
    if not pieces or len({p.shape[0] for p in pieces}) != 1:
        raise ValueError("project: pieces must be 2-D with the same number of rows")
    return pieces


def _columns(pieces: list[torch.Tensor], bounds: np.ndarray, start: int, stop: int) -> torch.Tensor:
    """Columns [start, stop) of the concatenation of pieces (a view when one piece holds them)."""
    import torch

    parts = []
    for p, lo, hi in zip(pieces, bounds[:-1], bounds[1:]):
        if hi > start and lo < stop:
            parts.append(p[:, max(start, lo) - lo: min(stop, hi) - lo])
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm; all-zero rows (nothing to learn from) stay zero."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


# ----------------------------------------------------------------------------- Adam directions
def adam_direction(grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, step: float,
                   betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.Tensor:
    """The update Adam would take for `grad` from the saved state (rows of `grad` = samples).

        m' = b1 m + (1 - b1) g          v' = b2 v + (1 - b2) g^2
        m^ = m' / (1 - b1^(t+1))        v^ = v' / (1 - b2^(t+1))
        direction = m^ / (sqrt(v^) + eps)

    with t the checkpoint's Adam step (the moments have seen t updates; this is update t+1), as in
    torch.optim.Adam and the LESS paper. LESS's code omits the bias correction and puts eps inside
    the square root; after L2 normalisation the two differ only where v is tiny.
    """
    b1, b2 = betas
    m = exp_avg * b1 + grad * (1 - b1)
    v = exp_avg_sq * b2 + grad * grad * (1 - b2)
    m_hat = m / (1 - b1 ** (step + 1))
    v_hat = v / (1 - b2 ** (step + 1))
    return m_hat / (v_hat.sqrt() + eps)


# ----------------------------------------------------------------------------- per-sample gradients
@dataclass(frozen=True)
class _Layout:
    """The trainable weights in named_parameters order, each with the Linear layer that owns it."""

    names: tuple[str, ...]
    modules: tuple[Any, ...]
    sizes: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.sizes)


def _layout(model: Any) -> _Layout:
    import torch

    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    owners = {f"{n}.weight": m for n, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and m.weight.requires_grad}
    others = [n for n in trainable if n not in owners]
    variants = [n for n, m in model.named_modules() if getattr(m, "lora_variant", None)]
    if others or variants or not trainable:
        # Per-sample gradients come from each Linear's input and output gradient: exact for plain
        # LoRA; DoRA, biases, embeddings or a full fine-tune would need more (and LESS uses LoRA).
        raise ValueError(f"influence needs a plain LoRA checkpoint; unsupported trainable parameters: "
                         f"{(others or variants)[:3]}")
    return _Layout(tuple(trainable), tuple(owners[n] for n in trainable),
                   tuple(owners[n].weight.numel() for n in trainable))


@dataclass(frozen=True)
class _Batch:
    input_ids: torch.Tensor  # B x L, right-padded (positions then match the unpadded sample's)
    attention_mask: torch.Tensor
    rows: torch.Tensor  # for each predicted response token: its sample ...
    cols: torch.Tensor  # ... and the position whose logits predict it
    targets: torch.Tensor
    counts: torch.Tensor  # response tokens per sample


def _collate(encoded: list[Row], pad_id: int, device: Any = "cpu") -> _Batch:
    import torch

    width = max(len(r["input_ids"]) for r in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, r in enumerate(encoded):
        n = len(r["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
    valid = labels[:, 1:] != IGNORE  # position t predicts token t+1
    rows, cols = valid.nonzero(as_tuple=True)
    parts = (ids, mask, rows, cols, labels[:, 1:][rows, cols], valid.sum(1))
    return _Batch(*(t.to(device) for t in parts))


def _sum_of_means(model: Any, batch: _Batch) -> torch.Tensor:
    """sum over samples of each sample's mean response-token loss: d/d(sample b) = its own gradient.

    Logits only at the predicting positions: the 49k-word head is a fifth of SmolLM2's forward.
    """
    import torch.nn.functional as F

    causal = model.get_base_model()
    if getattr(causal.config, "final_logit_softcapping", None):
        raise ValueError("logit soft-capping is not supported by the response-only head")
    hidden = causal.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                  use_cache=False).last_hidden_state
    logits = causal.get_output_embeddings()(hidden[batch.rows, batch.cols]).float()
    nll = F.cross_entropy(logits, batch.targets, reduction="none")
    return (nll / batch.counts[batch.rows]).sum()


class _Taps:
    """Forward hooks keeping each trainable Linear's input and output for one forward pass."""

    def __init__(self, modules: Sequence[Any]):
        self.modules, self.inputs, self.outputs, self._handles = modules, {}, {}, []

    def __enter__(self) -> "_Taps":
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.modules)]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()

    def _hook(self, i: int) -> Any:
        def hook(module: Any, args: tuple[Any, ...], output: Any) -> None:
            if i in self.outputs:
                raise RuntimeError("a LoRA layer ran twice in one forward: per-sample gradients unsupported")
            self.inputs[i], self.outputs[i] = args[0].detach(), output
        return hook


def batched_grads(model: Any, layout: _Layout, batch: _Batch) -> torch.Tensor:
    """B x P per-sample gradients from one backward.

    For a Linear y = W x, sample b's gradient is sum_t dL_b/dy_t (x) x_t: the output gradients come
    from one autograd.grad of the summed per-sample means (to the layer outputs, so no weight
    gradient is formed), the inputs from forward hooks. For lora_B that is sum_t delta_t (x) (A x_t)
    scaled, for lora_A sum_t (B^T delta_t scale) (x) x_t. Padded positions are zeroed.
    """
    import torch

    with _Taps(layout.modules) as taps:
        loss = _sum_of_means(model, batch)
    hooked = sorted(taps.outputs)
    grads = dict(zip(hooked, torch.autograd.grad(loss, [taps.outputs[i] for i in hooked], allow_unused=True)))
    flat = torch.zeros(batch.input_ids.shape[0], layout.total, device=loss.device)
    mask = batch.attention_mask[..., None].to(torch.float32)
    offset = 0
    for i, size in enumerate(layout.sizes):
        if grads.get(i) is not None:  # a layer that never reaches the loss has zero gradient
            per_sample = torch.bmm((grads[i] * mask).transpose(1, 2), taps.inputs[i])
            flat[:, offset: offset + size] = per_sample.reshape(len(per_sample), -1)
        offset += size
    return flat


def loop_grads(model: Any, layout: _Layout, encoded: list[Row]) -> torch.Tensor:
    """n x P gradients one sample at a time with the model's own loss (LESS's way; the reference)."""
    import torch

    params = [m.weight for m in layout.modules]
    out = torch.empty(len(encoded), layout.total, device=params[0].device)
    for i, r in enumerate(encoded):
        loss = model(input_ids=torch.tensor([r["input_ids"]], device=out.device),
                     labels=torch.tensor([r["labels"]], device=out.device), use_cache=False).loss
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        out[i] = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                            for g, p in zip(grads, params)])
    return out


# ----------------------------------------------------------------------------- features
@dataclass
class _Loaded:
    model: Any
    tok: Any
    layout: _Layout
    key: str


_RESIDENT: list[_Loaded] = []  # one model kept: candidates and targets of a checkpoint share it


def load_checkpoint(checkpoint: Path) -> _Loaded:
    """Base + adapter as a trainable PeftModel in eval mode (dropout off), float32, on the GPU if any."""
    key = folder_fingerprint(checkpoint)
    if _RESIDENT and _RESIDENT[0].key == key:
        return _RESIDENT[0]
    import torch
    import transformers
    from peft import PeftModel

    base = json.loads((checkpoint / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(checkpoint), is_trainable=True).eval()
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    tok = transformers.AutoTokenizer.from_pretrained(
        str(checkpoint) if (checkpoint / "tokenizer_config.json").exists() else base)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    _RESIDENT[:] = [_Loaded(model, tok, _layout(model), key)]
    return _RESIDENT[0]


def examples_hash(examples: Sequence[Example]) -> str:
    return fingerprint([[list(e.messages), e.response] for e in examples])


def features_key(checkpoint: Path, examples: Sequence[Example], kind: Kind, opts: InfluenceOptions,
                 max_seq_len: int) -> str:
    """Cache key: exactly what determines the features (not `batched`: both ways agree to 1e-5)."""
    return fingerprint({"v": FEATURES_VERSION, "checkpoint": folder_fingerprint(checkpoint),
                        "examples": examples_hash(examples), "kind": kind, "dim": opts.projection_dim,
                        "seed": opts.projection_seed, "max_seq_len": max_seq_len})


def gradient_features(checkpoint: Path, examples: list[Example], *, kind: Kind, opts: InfluenceOptions,
                      max_seq_len: int, batched: bool = True, cache_dir: Path | None = None) -> np.ndarray:
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
    job = _Job(loaded, _transform(checkpoint, loaded.layout) if kind == "adam" else None,
               Projector(opts.projection_dim, opts.projection_seed), opts.batch_size if batched else 0,
               Progress(len(examples), f"{kind} gradient features of {checkpoint.name}", unit="samples"))
    shards = [job.shard(encoded[s: s + rows], None if parts is None else parts / f"{i:05d}.npy")
              for i, s in enumerate(range(0, len(encoded), rows))]
    feats = np.concatenate(shards) if shards else np.zeros((0, opts.projection_dim), np.float32)
    if final is not None:
        save_npy(final, feats)
        shutil.rmtree(parts, ignore_errors=True)
    return feats


def _shard_rows(n_params: int, batch_size: int) -> int:
    return max(batch_size, min(MAX_SHARD_ROWS, SHARD_BYTES // (4 * n_params)))


def _transform(checkpoint: Path, layout: _Layout) -> Transform:
    """g -> Adam direction with this checkpoint's flattened moments (in layout order)."""
    import torch

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

    loaded: _Loaded
    transform: Transform | None  # None: plain gradients
    projector: Projector
    batch_size: int  # 0: LESS's one-sample loop
    progress: Progress

    def shard(self, encoded: list[Row | None], path: Path | None) -> np.ndarray:
        """Features of one shard: computed (longest first, so padding is small), or read back."""
        import torch

        if path is not None and path.exists():
            self.progress.update(len(encoded))
            return np.load(path)
        buf = torch.zeros(len(encoded), self.loaded.layout.total,  # rows that do not fit stay zero
                          device=self.loaded.layout.modules[0].weight.device)
        order = sorted((i for i, r in enumerate(encoded) if r is not None), key=lambda i: -len(encoded[i]["input_ids"]))
        for s in range(0, len(order), self.batch_size or 1):
            idx = order[s: s + (self.batch_size or 1)]
            grads = _grads(self.loaded, [encoded[i] for i in idx], batched=self.batch_size > 0)
            buf[idx] = self.transform(grads) if self.transform is not None else grads
            self.progress.update(len(idx))
        self.progress.update(len(encoded) - len(order))
        feats = l2_normalise(self.projector.project(buf))
        if path is not None:
            save_npy(path, feats)
        return feats


def _grads(loaded: _Loaded, rows: list[Row], batched: bool) -> torch.Tensor:
    if not batched:
        return loop_grads(loaded.model, loaded.layout, rows)
    device = loaded.layout.modules[0].weight.device
    return batched_grads(loaded.model, loaded.layout, _collate(rows, loaded.tok.pad_token_id, device))


def save_npy(path: Path, array: np.ndarray) -> None:
    """np.save via a temp file and rename: a reader never sees half an array."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


# ----------------------------------------------------------------------------- scores
def influence_scores(candidate_feats: list[np.ndarray], target_feats: list[np.ndarray], lrs: list[float],
                     aggregate: Literal["mean", "max"] = "mean") -> np.ndarray:
    """score_i = sum_c lrs[c] * agg_j <cand_c[i], target_c[j]>, agg = mean or max over targets.

    Rows are L2-normalised features, so the inner product is the cosine.
    """
    if not (len(candidate_feats) == len(target_feats) == len(lrs)) or not lrs:
        raise ValueError("need one candidate matrix, one target matrix and one lr per checkpoint")
    if aggregate not in ("mean", "max"):
        raise ValueError(f"aggregate must be 'mean' or 'max', got {aggregate!r}")
    scores = np.zeros(len(candidate_feats[0]), dtype=np.float64)
    for cand, target, lr in zip(candidate_feats, target_feats, lrs):
        if cand.shape[0] != scores.shape[0] or cand.shape[1] != target.shape[1]:
            raise ValueError(f"feature shapes disagree: {cand.shape} vs {target.shape}")
        target_t = target.T.astype(np.float64)
        for s in range(0, len(cand), 4096):  # bounds the candidates x targets block
            sims = cand[s: s + 4096].astype(np.float64) @ target_t
            scores[s: s + 4096] += lr * (sims.mean(1) if aggregate == "mean" else sims.max(1))
    return scores


def checkpoint_lr(checkpoint: Path) -> float:
    """The checkpoint's average learning rate since the previous one (LESS's weight)."""
    return float(json.loads((checkpoint / "meta.json").read_text())["avg_lr"])


def influence(checkpoints: list[Path], candidates: list[Example], targets: list[Example], *,
              opts: InfluenceOptions, max_seq_len: int, cache_dir: Path | None = None) -> np.ndarray:
    """Influence score of every candidate on the target set, over all checkpoints (LESS)."""
    if opts.max_target_samples is not None and len(targets) > opts.max_target_samples:
        pick = np.random.default_rng(opts.projection_seed).choice(len(targets), opts.max_target_samples, replace=False)
        targets = [targets[i] for i in sorted(pick)]
    cand, tgt = [], []
    for ckpt in checkpoints:
        cand.append(gradient_features(ckpt, candidates, kind="adam", opts=opts, max_seq_len=max_seq_len,
                                      cache_dir=cache_dir))
        tgt.append(gradient_features(ckpt, targets, kind="sgd", opts=opts, max_seq_len=max_seq_len,
                                     cache_dir=cache_dir))
    return influence_scores(cand, tgt, [checkpoint_lr(c) for c in checkpoints], opts.aggregate)
