"""Seeded random projections of per-sample gradients to D dimensions (inner products kept within JL).

Two projections, chosen by `InfluenceOptions.projection`:
  sjlt        the default: a sparse Johnson-Lindenstrauss transform (`SparseProjector`), one +-1 per
              parameter, from a counter-based hash computed on the gradients' own device; cost per
              sample ~P (not P x D), streamed layer by layer, same codes on every device;
  rademacher  LESS's dense +-1/sqrt(D) matrix (`RademacherProjector`), P x D per call.
`ExactProjector` ("none") keeps the whole vectors: exact cosines, for tests and benchmarks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np
import torch

from scoder_lib.method.influence.hashing import index_codes, seed_keys

CHUNK_ROWS = 2048  # parameter rows per dense projection block: a block is CHUNK_ROWS x D float32
# Why cache the sparse codes (int32 bucket + int8 sign, 5 bytes a parameter): hashing costs ~30 tensor
# ops a parameter, and every batch of every checkpoint projects the same parameters. 2 GiB holds
# the paper's 3.2e8 LoRA parameters (1.6 GB); past it codes are hashed again at each call.
CODES_CACHE_BYTES = 2 << 30


class Stream(Protocol):
    """Features of n samples, built from gradient blocks as they come (rows, parameter offset).

    `add` may consume its block (scale it in place): pass a temporary.
    """

    def add(self, rows: torch.Tensor, offset: int, block: torch.Tensor) -> None: ...

    def result(self) -> np.ndarray: ...


class SparseProjector:
    """Sparse JL transform (CountSketch): parameter i adds s(i) x g_i to output h(i); no scaling.

    h(i) in [0, D) and s(i) = +-1 come from a fixed counter-based hash of (seed, i) (see
    `hashing`), computed with exact integer tensor ops on the device of the gradients: the same
    seed gives the same matrix on CPU and GPU, whatever the chunking. <Su, Sv> is unbiased for
    <u, v> with variance (|u|^2 |v|^2 + <u,v>^2 - 2 sum_i u_i^2 v_i^2) / D, the dense Rademacher
    projection's (Charikar et al. 2002; Kane & Nelson 2014; GraSS, Hu et al. 2025, for attribution).
    """

    kind = "sjlt"

    def __init__(self, dim: int, seed: int, cache_bytes: int = CODES_CACHE_BYTES):
        if not 0 < dim <= 1 << 31 or seed < 0:
            raise ValueError(f"projection needs 0 < dim <= 2^31 and seed >= 0, got dim={dim}, seed={seed}")
        self.dim, self.seed, self.cache_bytes = dim, seed, cache_bytes
        self._keys = seed_keys(seed)
        self._cache: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._cached_bytes = 0

    def codes(self, offset: int, size: int, device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(bucket int32, sign int8) of parameters [offset, offset + size), on `device`."""
        key = (offset, size, str(device))
        if key in self._cache:
            return self._cache[key]
        bucket, sign = index_codes(offset, size, self._keys, self.dim, device)
        if self._cached_bytes + 5 * size <= self.cache_bytes:
            self._cache[key] = (bucket, sign)
            self._cached_bytes += 5 * size
        return bucket, sign

    def sketch_(self, block: torch.Tensor, offset: int) -> torch.Tensor:
        """n x D sketch of the n x size block that holds parameters [offset, offset + size).

        A float32 block is consumed (scaled in place): a fresh product would cost more than the sketch.
        """
        bucket, sign = self.codes(offset, block.shape[1], block.device)
        out = torch.zeros(block.shape[0], self.dim, device=block.device, dtype=torch.float32)
        # int64 indices: torch's CPU index_add_ runs 8x slower with int32 ones (measured)
        return out.index_add_(1, bucket.long(), block.float().mul_(sign))

    def project(self, vectors: Any) -> np.ndarray:
        """n x dim projection of n vectors, whole (n x P) or as consecutive pieces (n x P_k)."""
        pieces = [torch.as_tensor(p, dtype=torch.float32) for p in _pieces(vectors)]
        out, offset = torch.zeros(pieces[0].shape[0], self.dim, device=pieces[0].device), 0
        for p in pieces:
            out += self.sketch_(p.clone(), offset)
            offset += p.shape[1]
        return out.cpu().numpy()

    def stream(self, n: int, total: int, device: Any) -> Stream:
        return _SketchStream(self, n, device)

    def matrix(self, n_params: int) -> np.ndarray:
        """The dense n_params x dim matrix (tests only: it is what `project` multiplies by)."""
        bucket, sign = self.codes(0, n_params)
        dense = np.zeros((n_params, self.dim), dtype=np.float32)
        dense[np.arange(n_params), bucket.numpy()] = sign.numpy()
        return dense


class _SketchStream:
    def __init__(self, projector: SparseProjector, n: int, device: Any):
        self.projector, self.out = projector, torch.zeros(n, projector.dim, device=device)

    def add(self, rows: torch.Tensor, offset: int, block: torch.Tensor) -> None:
        self.out.index_add_(0, rows.to(self.out.device), self.projector.sketch_(block, offset))

    def result(self) -> np.ndarray:
        return self.out.cpu().numpy()


class _BufferStream:
    """Whole vectors kept (n x P), finished at the end: what a dense projection needs."""

    def __init__(self, finish: Callable[[torch.Tensor], np.ndarray], n: int, total: int, device: Any):
        self.finish, self.buf = finish, torch.zeros(n, total, device=device)

    def add(self, rows: torch.Tensor, offset: int, block: torch.Tensor) -> None:
        self.buf[rows.to(self.buf.device), offset : offset + block.shape[1]] = block.float()

    def result(self) -> np.ndarray:
        return self.finish(self.buf)


class ExactProjector:
    """No projection: the features are the whole vectors (exact cosines; memory n x P)."""

    kind = "none"

    def project(self, vectors: Any) -> np.ndarray:
        return torch.cat([torch.as_tensor(p, dtype=torch.float32) for p in _pieces(vectors)], 1).cpu().numpy()

    def stream(self, n: int, total: int, device: Any) -> Stream:
        return _BufferStream(lambda buf: buf.cpu().numpy(), n, total, device)


class RademacherProjector:
    """Seeded dense Rademacher projection R (parameters x dim, entries +-1/sqrt(dim)), applied in chunks.

    LESS's projection. R is never materialised: the block of rows [k*CHUNK_ROWS, (k+1)*CHUNK_ROWS)
    is regenerated on the fly from numpy's PCG64 seeded with (seed, k), one random bit per entry
    (stream-stable across platforms and numpy versions), on the CPU: about P x D x 2 ns a call,
    whatever the number of rows, which is why features buffer whole shards for it.
    """

    kind = "rademacher"

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

        pieces = [torch.as_tensor(p, dtype=torch.float32) for p in _pieces(vectors)]
        bounds, device = np.cumsum([0] + [p.shape[1] for p in pieces]), pieces[0].device
        out_t = torch.zeros(self.dim, pieces[0].shape[0], device=device)  # transposed: MKL ran this faster
        for k, start in enumerate(range(0, int(bounds[-1]), self.chunk_rows)):
            stop = min(start + self.chunk_rows, int(bounds[-1]))
            block = self._block_t(k, stop - start).to(device)  # generated on the CPU: same bits everywhere
            out_t.addmm_(block, _columns(pieces, bounds, start, stop).T)
        return (out_t.T / math.sqrt(self.dim)).cpu().numpy()

    def stream(self, n: int, total: int, device: Any) -> Stream:
        return _BufferStream(self.project, n, total, device)

    def matrix(self, n_params: int) -> np.ndarray:
        """The dense n_params x dim matrix (tests only: it is what `project` multiplies by)."""
        blocks = [
            self._block_t(k, min(self.chunk_rows, n_params - s)).numpy().T.copy()
            for k, s in enumerate(range(0, n_params, self.chunk_rows))
        ]
        return np.concatenate(blocks) / math.sqrt(self.dim)

    def _block_t(self, k: int, rows: int) -> torch.Tensor:
        """Chunk k's +-1 block, transposed (dim x rows, float32), from PCG64 seeded (seed, k)."""

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


Projector = SparseProjector | RademacherProjector | ExactProjector


def make_projector(kind: str, dim: int, seed: int) -> Projector:
    """The projection `InfluenceOptions.projection` names."""
    if kind == "sjlt":
        return SparseProjector(dim, seed)
    if kind == "rademacher":
        return RademacherProjector(dim, seed)
    if kind == "none":
        return ExactProjector()
    raise ValueError(f"unknown projection {kind!r}: expected 'sjlt', 'rademacher' or 'none'")


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

    parts = []
    for p, lo, hi in zip(pieces, bounds[:-1], bounds[1:]):
        if hi > start and lo < stop:
            parts.append(p[:, max(start, lo) - lo : min(stop, hi) - lo])
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm; all-zero rows (nothing to learn from) stay zero."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)
