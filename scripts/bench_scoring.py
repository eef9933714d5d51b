"""Benchmark: multi-aspect rating with one shared encoding of the candidate vs Z full passes.

    .venv/bin/python scripts/bench_scoring.py [--candidates 12] [--model smollm2-135m-instruct]

Same candidates (teacher samples of the seed set), same Z=5 aspect questions; prints seconds per
candidate for both, the ratio, and the largest difference between their digit probabilities.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

import scoder_lib  # noqa: F401
from scoder_lib.core.config import REPO_ROOT, ModelSpec
from scoder_lib.core.params import load_config
from scoder_lib.method import scoring, seed
from scoder_lib.method.rating import make_rater


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--candidates", type=int, default=12)
    args = ap.parse_args()
    aspects = load_config("tiny").iterate.aspects
    rows = seed.load(REPO_ROOT / "data" / "seed" / "seed_v1.jsonl").train[: args.candidates]
    prompts = [scoring.rating_prompt(r["snippet"], seed.response(r), aspects) for r in rows]
    rater = make_rater(ModelSpec(name=args.model), REPO_ROOT / ".cache" / "scoder")
    rater.store = None  # measure the model, not the cache
    rater.rate(prompts[:1], shared=True)  # warm-up (allocations, kernels)
    timings, probs = {}, {}
    for shared in (True, False):
        rater.forward_tokens = 0
        start = time.perf_counter()
        probs[shared] = rater.rate(prompts, shared=shared)
        timings[shared] = (time.perf_counter() - start, rater.forward_tokens)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(probs[True], probs[False]))
    (ts, ns), (tf, nf) = timings[True], timings[False]
    print(f"machine: {platform.machine()}, model {args.model}, {len(prompts)} candidates x Z={len(aspects)} aspects")
    print(f"shared encoding: {ts / len(prompts):.2f} s/candidate ({ns} tokens through the model)")
    print(f"Z full passes:   {tf / len(prompts):.2f} s/candidate ({nf} tokens through the model)")
    print(f"ratio {tf / ts:.2f}x; max |p_shared - p_full| = {diff:.2e} (same ratings within 1e-4: {diff < 1e-4})")


if __name__ == "__main__":
    main()
