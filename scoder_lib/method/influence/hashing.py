"""A counter-based 32-bit hash in exact integer arithmetic: identical bits on CPU, GPU, numpy or plain ints.

Why not torch.Generator: its CPU and CUDA streams differ for the same seed, so a projection drawn
with it would give other features on another device. This hash is a pure function of (key, i)
computed with int64 tensor ops whose every intermediate stays below 2^63 (no overflow, no
device-specific rounding), so any device, chunking or order yields the same bits.

The mixer is Wellons's "lowbias32" (xor-shift / multiply rounds, a bijection of 32-bit words).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

MASK32 = 0xFFFFFFFF
_M1, _M2 = 0x7FEB352D, 0x846CA68B
# Nothing-up-my-sleeve constants (hex digits of pi) that separate the seed's derived keys.
_PI = (0x243F6A88, 0x85A308D3, 0x13198A2E)

Word = TypeVar("Word", int, torch.Tensor)


def mul32(x: Word, c: int) -> Word:
    """(x * c) mod 2^32 for x in [0, 2^32), as two 16-bit halves: products stay below 2^48."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & MASK32


def mix32(x: Word) -> Word:
    """lowbias32 of 32-bit words held in ints or int64 tensors (values in [0, 2^32))."""
    x = x ^ (x >> 16)
    x = mul32(x, _M1)
    x = x ^ (x >> 15)
    x = mul32(x, _M2)
    return x ^ (x >> 16)


def seed_keys(seed: int) -> tuple[int, int]:
    """Two 32-bit keys derived from a seed in [0, 2^64)."""
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"seed must be in [0, 2^64), got {seed}")
    k0 = mix32((seed & MASK32) ^ _PI[0])
    k1 = mix32(((seed >> 32) & MASK32) ^ k0 ^ _PI[1])
    return k0, mix32(k1 ^ _PI[2])


def index_codes(
    offset: int, size: int, keys: tuple[int, int], dim: int, device: object = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(bucket, sign) of indices i in [offset, offset + size): int32 in [0, dim) and int8 +-1, on `device`.

    h(i) = mix32(lo(i) ^ k0 ^ mix32(hi(i) ^ k1)), with lo, hi the 32-bit halves of i;
    bucket(i) = floor(h(i) * dim / 2^32) (its top bits), sign(i) = 1 - 2 (h(i) & 1) (its bottom bit).
    On the CPU numpy's wrapping uint32 arithmetic computes it (about 30x faster than int64 tensor
    ops); elsewhere `torch_index_hash` does, with the same bits.
    """
    if not 0 < dim <= 1 << 31:
        raise ValueError(f"dim must be in (0, 2^31], got {dim}")
    if torch.device(device).type != "cpu":
        h = torch_index_hash(torch.arange(offset, offset + size, dtype=torch.int64, device=device), keys)
        return ((h * dim) >> 32).to(torch.int32), (1 - 2 * (h & 1)).to(torch.int8)  # h * dim < 2^63
    bucket, sign = np.empty(size, dtype=np.int32), np.empty(size, dtype=np.int8)
    for start in range(offset, offset + size, _NP_CHUNK):  # chunks that stay in cache
        stop = min(start + _NP_CHUNK, offset + size)
        h = _mix32_np((np.arange(start, stop, dtype=np.int64) & MASK32).astype(np.uint32) ^ _hi_key(start, stop, keys))
        bucket[start - offset : stop - offset] = (h.astype(np.uint64) * np.uint64(dim)) >> np.uint64(32)
        sign[start - offset : stop - offset] = 1 - 2 * (h & np.uint32(1)).astype(np.int8)
    return torch.from_numpy(bucket), torch.from_numpy(sign)


def torch_index_hash(idx: torch.Tensor, keys: tuple[int, int]) -> torch.Tensor:
    """index_hash of int64 indices with int64 tensor ops only (any device)."""
    k0, k1 = keys
    hi = idx >> 32
    if idx.numel() and int(hi.min()) == int(hi.max()):  # always, below 2^32 parameters: one scalar mix
        return mix32((idx & MASK32) ^ (k0 ^ mix32(int(hi.min()) ^ k1)))
    return mix32((idx & MASK32) ^ k0 ^ mix32(hi ^ k1))


_NP_CHUNK = 1 << 16


def _hi_key(start: int, stop: int, keys: tuple[int, int]) -> np.ndarray | np.uint32:
    k0, k1 = keys
    if start >> 32 == (stop - 1) >> 32:
        return np.uint32(k0 ^ mix32((start >> 32) ^ k1))
    hi = (np.arange(start, stop, dtype=np.int64) >> 32).astype(np.uint32)
    return np.uint32(k0) ^ _mix32_np(hi ^ np.uint32(k1))


def _mix32_np(x: np.ndarray) -> np.ndarray:
    """mix32 in place on uint32 arrays (numpy's unsigned arithmetic wraps mod 2^32 by definition)."""
    x ^= x >> np.uint32(16)
    x *= np.uint32(_M1)
    x ^= x >> np.uint32(15)
    x *= np.uint32(_M2)
    x ^= x >> np.uint32(16)
    return x
