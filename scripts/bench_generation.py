"""Benchmark: the transformers backend's batched decoding vs a naive loop of `model.generate`.

    .venv/bin/python scripts/bench_generation.py [--model smollm2-135m-instruct] [--prompts 32] [--max-new 64]

Same prompts, greedy, same max_new_tokens; checks the outputs are identical, prints tokens/s at each
batch size and the ratio to the naive loop (one `model.generate` call per prompt).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

import scoder_lib  # noqa: F401  (OMP_WAIT_POLICY before torch)
from scoder_lib.core.config import REPO_ROOT, ModelSpec, Sampling
from scoder_lib.llm.base import GenRequest
from scoder_lib.llm.generator import make_backend
from scoder_lib.llm.models import load, prepare

TASKS = [
    "adds two numbers",
    "reverses a string",
    "checks whether a number is prime",
    "computes n factorial",
    "counts the vowels in a string",
    "merges two sorted lists",
    "returns the largest element of a list",
    "flattens a nested list",
    "removes duplicates from a list keeping order",
    "converts Celsius to Fahrenheit",
    "returns the n-th Fibonacci number",
    "checks whether a string is a palindrome",
    "computes the average of a list",
    "finds the longest word in a sentence",
    "transposes a matrix",
    "parses a comma-separated line into integers",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--batch-sizes", default="1,8,16,32")
    args = ap.parse_args()
    cache = REPO_ROOT / ".cache" / "scoder"
    prompts = [
        f"Write a Python function that {TASKS[i % len(TASKS)]}." + (" Keep it short." if i >= len(TASKS) else "")
        for i in range(args.prompts)
    ]
    sampling = Sampling(max_new_tokens=args.max_new)
    reqs = [GenRequest.chat([{"role": "user", "content": p}], sampling) for p in prompts]
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads; "
        f"model {args.model}; {len(prompts)} prompts, greedy, {args.max_new} new tokens max"
    )

    model, tok = load(prepare(ModelSpec(name=args.model), cache))
    backend = make_backend(ModelSpec(name=args.model, batch_size=1), cache)
    start = time.perf_counter()
    naive = []
    for r in reqs:  # the naive loop: one generate call per prompt
        ids = torch.tensor([backend.encode(r)])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new, do_sample=False)
        naive.append(out[0, ids.shape[1] :].tolist())
    naive_s = time.perf_counter() - start
    eos = tok.eos_token_id
    naive_tokens = sum(len([t for t in seq if t != eos]) for seq in naive)
    naive_texts = [tok.decode(seq, skip_special_tokens=True) for seq in naive]
    print(f"naive model.generate loop: {naive_tokens / naive_s:.1f} tok/s ({naive_s:.1f} s)")

    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        backend.batch_size = bs
        start = time.perf_counter()
        res = backend.generate(reqs)
        secs = time.perf_counter() - start
        tokens = sum(c.tokens for r in res for c in r.completions)
        same = sum(r.texts[0] == t for r, t in zip(res, naive_texts))
        print(
            f"backend batch {bs:>2}: {tokens / secs:6.1f} tok/s ({secs:.1f} s), "
            f"{(tokens / secs) / (naive_tokens / naive_s):.2f}x the naive loop; identical outputs {same}/{len(reqs)}"
        )


if __name__ == "__main__":
    main()
