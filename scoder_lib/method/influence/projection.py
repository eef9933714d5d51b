"""Seeded random projection of per-sample gradients to D dimensions (inner products kept within JL)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

CHUNK_ROWS = 2048  # parameter rows per projection block: a block is CHUNK_ROWS x D float32


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
