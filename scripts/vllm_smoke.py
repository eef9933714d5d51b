"""Start the vLLM backend on a model and time greedy chat generation (tokens/s).

.venv-vllm/bin/python scripts/vllm_smoke.py [--model smollm2-135m-instruct] [--prompts 16]
"""

from __future__ import annotations

import argparse
import json
import time

from scoder_lib.core.config import REPO_ROOT, ModelSpec, Sampling, VllmOptions
from scoder_lib.core.logs import get_logger, setup_logging
from scoder_lib.llm.base import GenRequest
from scoder_lib.llm.models import prepare
from scoder_lib.llm.vllm_backend import VllmBackend  # after logging set-up: vLLM logs on import

log = get_logger("vllm_smoke")
TOPICS = [
    "reverse a string",
    "check whether a number is prime",
    "merge two sorted lists",
    "count words in a text",
    "flatten a nested list",
    "compute a factorial",
    "parse an ISO date",
    "find duplicates in a list",
]


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--eager", action="store_true", help="enforce_eager: skip torch.compile (faster start)")
    args = ap.parse_args()

    spec = ModelSpec(name=args.model, backend="vllm", dtype=args.dtype, vllm=VllmOptions(enforce_eager=args.eager))
    start = time.monotonic()
    backend = VllmBackend(prepare(spec, REPO_ROOT / ".cache" / "scoder"), spec)
    started = time.monotonic() - start
    sampling = Sampling(temperature=0.0, max_new_tokens=args.max_new_tokens)
    requests = [
        GenRequest.chat(
            [{"role": "user", "content": f"Write a Python function to {TOPICS[i % len(TOPICS)]} (variant {i})."}],
            sampling,
        )
        for i in range(args.prompts)
    ]
    backend.generate(requests[:1])  # warm-up: the first step compiles
    start = time.monotonic()
    results = backend.generate(requests)
    elapsed = time.monotonic() - start
    tokens = sum(c.tokens for r in results for c in r.completions)
    print(
        json.dumps(
            {
                "eager": args.eager,
                "engine_start_s": round(started, 1),
                "prompts": len(requests),
                "tokens": tokens,
                "seconds": round(elapsed, 2),
                "tok_per_s": round(tokens / elapsed, 1),
            }
        )
    )
    backend.close()


if __name__ == "__main__":  # vLLM's CPU engine spawns processes that re-import this file
    main()
