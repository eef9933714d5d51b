"""Projections for influence: the hashed sparse JL transform (codes, JL tolerance, streams), LESS's dense one."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from scoder_lib.method.influence import hashing
from scoder_lib.method.influence import projection as inf_proj


# ----------------------------------------------------------------------------- the hash
def _reference_codes(indices: np.ndarray, seed: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The documented scheme written out independently, in Python integers."""

    def mix(x: int) -> int:
        x ^= x >> 16
        x = (x * 0x7FEB352D) % 2**32
        x ^= x >> 15
        x = (x * 0x846CA68B) % 2**32
        return x ^ (x >> 16)

    k0 = mix((seed % 2**32) ^ 0x243F6A88)
    k1 = mix(mix((seed >> 32) ^ k0 ^ 0x85A308D3) ^ 0x13198A2E)
    h = [mix((int(i) % 2**32) ^ k0 ^ mix((int(i) >> 32) ^ k1)) for i in indices]
    return np.array([x * dim >> 32 for x in h]), np.array([1 - 2 * (x & 1) for x in h])


@pytest.mark.parametrize("offset", [0, 2**32 - 700])  # the second straddles the 32-bit boundary
def test_codes_are_the_documented_hash_on_both_code_paths(offset):
    """The CPU path (numpy uint32) and the path every other device runs (int64 tensor ops, here on
    the CPU) give the reference's exact bits: the same seed is the same matrix everywhere."""
    seed, dim, size = 2**40 + 17, 8192, 1500
    ref_bucket, ref_sign = _reference_codes(np.arange(offset, offset + size), seed, dim)
    keys = hashing.seed_keys(seed)
    bucket, sign = hashing.index_codes(offset, size, keys, dim)
    assert bucket.dtype == torch.int32 and sign.dtype == torch.int8
    assert np.array_equal(bucket.numpy(), ref_bucket) and np.array_equal(sign.numpy(), ref_sign)
    h = hashing.torch_index_hash(torch.arange(offset, offset + size), keys)
    assert np.array_equal(((h * dim) >> 32).numpy(), ref_bucket) and np.array_equal((1 - 2 * (h & 1)).numpy(), ref_sign)


def test_codes_are_uniform_balanced_and_chunk_invariant():
    proj = inf_proj.SparseProjector(64, seed=3)
    bucket, sign = proj.codes(0, 200_000)
    counts = np.bincount(bucket.numpy(), minlength=64)
    expected = 200_000 / 64
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 120  # 63 degrees of freedom: P(chi2 > 120) < 1e-4 for a uniform hash
    assert abs(float(sign.float().mean())) < 4 / math.sqrt(200_000)  # 4 sigma
    # signs independent of buckets: balanced inside each bucket
    per_bucket = np.bincount(bucket.numpy(), weights=sign.numpy(), minlength=64) / counts
    assert np.abs(per_bucket).max() < 5 / math.sqrt(expected)
    part_b, part_s = inf_proj.SparseProjector(64, seed=3, cache_bytes=0).codes(12_345, 1000)
    assert torch.equal(part_b, bucket[12_345:13_345]) and torch.equal(part_s, sign[12_345:13_345])
    assert not torch.equal(inf_proj.SparseProjector(64, seed=4).codes(0, 1000)[0], bucket[:1000])


# ----------------------------------------------------------------------------- JL tolerance
def _vectors(n: int, p: int, seed: int) -> np.ndarray:
    """Unit vectors with cosines spread over [0, 1): random ones and noisy copies of a few."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((4, p))
    mix = rng.uniform(0, 1, (n, 1))
    x = mix * base[rng.integers(0, 4, n)] + (1 - mix) * rng.standard_normal((n, p))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["sjlt", "rademacher"])
def test_projection_preserves_inner_products_and_cosines(kind):
    """JL check with a stated failure probability. For unit u, v with cosine c, both projections
    give <Ru, Rv> unbiased with variance (1 + c^2 - 2 sum u_i^2 v_i^2)/D <= (1 + c^2)/D (the
    sparse one: each coordinate lands in one hashed bucket with a hashed sign), and the projected
    cosine's variance is about (1 - c^2)^2/D <= 1/D. With a Gaussian tail (sums of many small
    terms: no coordinate carries a sizeable share of a vector's norm) and a union bound over the
    m = 820 pairs and norms of 40 vectors at failure probability 1e-3, every error is within
    z = sqrt(2 ln(2m/1e-3)) = 5.35 standard deviations: |cos error| <= 5.35/sqrt(D) = 0.118 at D = 2048."""
    dim, n = 2048, 40
    x = _vectors(n, 20_000, seed=1)
    y = inf_proj.make_projector(kind, dim, seed=3).project(x).astype(np.float64)
    z = math.sqrt(2 * math.log(2 * (n * (n + 1) // 2) / 1e-3))
    exact = x @ x.T
    assert np.all(np.abs(y @ y.T - exact) <= z * np.sqrt((1 + exact**2) / dim))
    yn = y / np.linalg.norm(y, axis=1, keepdims=True)
    assert np.abs(yn @ yn.T - exact).max() <= z / math.sqrt(dim)
    upper = np.triu_indices(n, 1)
    assert exact[upper].max() > 0.8  # similar pairs are in the test, not only orthogonal ones
    # the error has the predicted size (a wrong scale or a repeated bucket pattern would show here)
    rms = math.sqrt(np.mean((y @ y.T - exact)[upper] ** 2))
    assert 0.7 / math.sqrt(dim) < rms < 1.5 / math.sqrt(dim)


# ----------------------------------------------------------------------------- seeds, pieces, streams
@pytest.mark.parametrize("kind", ["sjlt", "rademacher"])
def test_projection_is_seeded_and_chunk_invariant(kind):
    x = np.random.default_rng(0).standard_normal((5, 5000)).astype(np.float32)
    proj = inf_proj.make_projector(kind, 256, seed=7)
    y = proj.project(x)
    assert np.array_equal(y, inf_proj.make_projector(kind, 256, seed=7).project(x))
    assert not np.allclose(y, inf_proj.make_projector(kind, 256, seed=8).project(x))
    # pieces (list or by-name mapping) equal the concatenated vector, chunk boundaries included
    pieces = [x[:, :1000], x[:, 1000:2100], x[:, 2100:4096], x[:, 4096:]]
    assert np.allclose(proj.project(pieces), y, atol=1e-5)
    assert np.allclose(proj.project({f"p{i}": p for i, p in enumerate(pieces)}), y, atol=1e-5)
    # and both equal the product with the dense matrix
    dense = proj.matrix(5000)
    assert np.allclose(x @ dense, y, atol=1e-4)
    if kind == "rademacher":  # entries +-1/sqrt(D)
        assert set(np.unique(dense * math.sqrt(256))) == {-1.0, 1.0} and abs(dense.mean()) * 16 < 0.01
    else:  # one +-1 per parameter
        assert np.array_equal(np.abs(dense).sum(1), np.ones(5000)) and set(np.unique(dense)) == {-1.0, 0.0, 1.0}
    assert np.array_equal(x, np.random.default_rng(0).standard_normal((5, 5000)).astype(np.float32))  # input kept


@pytest.mark.parametrize("kind", ["sjlt", "rademacher", "none"])
def test_stream_of_blocks_in_any_order_equals_the_whole(kind):
    """Features built block by block (rows of a shard, parameter ranges, any order) = the whole projection."""
    x = torch.randn(6, 3000)
    proj = inf_proj.make_projector(kind, 128, seed=1)
    stream = proj.stream(6, 3000, "cpu")
    for rows in (torch.tensor([4, 0, 2]), torch.tensor([1, 5, 3])):
        for lo, hi in ((2000, 3000), (0, 700), (700, 2000)):
            stream.add(rows, lo, x[rows, lo:hi].clone())
    assert np.allclose(stream.result(), proj.project(x.numpy()), atol=1e-4)


def test_sparse_projection_costs_far_less_than_dense():
    """The reason for it: at P = 2e5, D = 4096 the sparse sketch is >= 20x cheaper than the dense one
    (measured ~200x on the 2-core machine; CPU time, so other jobs matter little)."""
    x = torch.randn(8, 200_000)
    sparse, dense = inf_proj.SparseProjector(4096, 0), inf_proj.RademacherProjector(4096, 0)
    sparse.project(x[:1])  # the codes, once
    times = {}
    for name, proj in (("sparse", sparse), ("dense", dense)):
        start = time.process_time()
        proj.project(x)
        times[name] = time.process_time() - start
    assert times["dense"] > 20 * times["sparse"]
