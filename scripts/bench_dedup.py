"""Benchmark: MinHash LSH near dedup vs exact all-pairs Jaccard, side by side in one run.

    .venv/bin/python scripts/bench_dedup.py [--min-snippets 20000] [--subset 2000]

Snippets come from the standard library plus the installed packages (site-packages). Prints
near-dedup throughput on all of them, recall of LSH against brute force on a subset, and the speed
ratio on that subset and extrapolated (all-pairs is quadratic) to the full set.
"""

from __future__ import annotations

import argparse
import random
import site
import sysconfig
import time
from pathlib import Path

import scoder_lib  # noqa: F401
from scoder_lib.core.config import DedupOptions, ExtractOptions
from scoder_lib.data.dedup import candidate_pairs, exact_dedup, exact_pairs, near_dedup
from scoder_lib.data.pool import extract_file


def collect(min_snippets: int) -> list[str]:
    opts = ExtractOptions(skip_path_patterns=["test", "tests"])
    roots = [Path(sysconfig.get_paths()["stdlib"])] + [Path(p) for p in site.getsitepackages()]
    texts: list[str] = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            try:
                raw = path.read_bytes()
            except OSError:
                continue
            texts += [s.text for s in extract_file("bench", str(path), raw, opts)[0]]
            if len(texts) >= min_snippets * 1.3:
                break
    keep, _ = exact_dedup(texts)  # exact copies would flatter both methods equally
    return [texts[i] for i in keep]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--min-snippets", type=int, default=20_000)
    ap.add_argument("--subset", type=int, default=2_000)
    ap.add_argument("--threshold", type=float, default=DedupOptions().threshold)
    args = ap.parse_args()
    opts = DedupOptions(threshold=args.threshold)
    texts = collect(args.min_snippets)
    print(f"snippets (after exact dedup): {len(texts)}")

    t = time.perf_counter()
    res = near_dedup(texts, opts)
    lsh_full = time.perf_counter() - t
    print(
        f"near dedup, all {len(texts)}: {lsh_full:.1f} s = {len(texts) / lsh_full:.0f} snippets/s; "
        f"{len(res.dup_of)} near duplicates, {len(res.cluster_sizes)} clusters"
    )

    n = min(args.subset, len(texts))
    # A random subset holds few duplicate pairs; a contiguous block (files of one package side by
    # side) holds many, so recall is measured on both.
    middle = len(texts) // 2
    subsets = {"random": random.Random(0).sample(texts, n), "contiguous": texts[middle - n // 2 : middle + n - n // 2]}
    brute_sub = lsh_sub = 0.0
    for name, sub in subsets.items():
        t = time.perf_counter()
        found = candidate_pairs(sub, opts)
        lsh_sub = time.perf_counter() - t
        t = time.perf_counter()
        truth = exact_pairs(sub, opts)
        brute_sub = time.perf_counter() - t
        recall = len(truth & found) / len(truth) if truth else float("nan")
        precision = len(truth & found) / len(found) if found else float("nan")
        print(
            f"{name} subset of {len(sub)}: true pairs (Jaccard >= {opts.threshold}) {len(truth)}, "
            f"LSH pairs {len(found)}, recall {recall:.3f}, precision {precision:.3f}; "
            f"LSH {lsh_sub:.2f} s vs exact all-pairs {brute_sub:.2f} s = {brute_sub / lsh_sub:.1f}x"
        )
    brute_full = brute_sub * (len(texts) / n) ** 2
    print(
        f"all-pairs on all {len(texts)} extrapolated (quadratic in n): {brute_full:.0f} s; "
        f"LSH measured {lsh_full:.1f} s; ratio {brute_full / lsh_full:.0f}x"
    )


if __name__ == "__main__":
    main()
