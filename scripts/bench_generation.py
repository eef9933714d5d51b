"""Benchmark: the synthesis workload on each generation backend, side by side in one run.

    .venv/bin/python scripts/bench_generation.py [--profile tiny] [--n 64] [--adapter FOLDER]
        [--vllm-python .venv-vllm/bin/python] [--out bench.json]

The held-out prompts of the compact seed set (`messages(snippet, "v2")`), sampled at the profile's
`iterate.sampling` (temperature, top_p, max_new_tokens), seed = request index, one `generate` call
per backend: transformers (the profile synthesizer's batch size), llama.cpp (2 workers x 1 thread;
16 slots on float16 weights with the LoRA merged, and one slot on the Q4_1 file with the LoRA as a
runtime adapter), and vLLM's CPU build in its own interpreter when --vllm-python is given. Set-up (model load, worker
spawn, engine start) is timed apart from generation. The table gives each backend's rate against the transformers
backend and against vLLM-CPU (when it ran).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

# Heavy imports live in main(): llama.cpp workers are spawned processes, which import this file again.


def _requests(profile: str, n: int) -> tuple[list, object]:
    from scoder_lib.core.config import REPO_ROOT  # noqa: PLC0415
    from scoder_lib.core.params import load_config  # noqa: PLC0415
    from scoder_lib.llm.base import GenRequest  # noqa: PLC0415
    from scoder_lib.method import seed  # noqa: PLC0415
    from scoder_lib.method.synthesis import messages  # noqa: PLC0415

    cfg = load_config(profile)
    rows = seed.load(REPO_ROOT / "data" / "seed" / "seed_compact_v2.jsonl").heldout[:n]
    if len(rows) < n:
        raise SystemExit(f"only {len(rows)} held-out prompts, asked for {n}")
    sampling = cfg.iterate.sampling
    return [GenRequest.chat(messages(r.snippet, "v2"), sampling, seed=i) for i, r in enumerate(rows)], cfg


def _cpu_s() -> float:
    """CPU seconds of this process and its reaped children (on a shared machine, wall rates are CPU shares)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _bench(label: str, spec, cache, requests: list, warmup: bool = False, reaped: bool = True) -> dict:
    """One backend's set-up and one `generate` call. `reaped`: its processes exit and are waited for on close,
    so their CPU time is counted (vLLM runs in a shared worker that outlives close: its CPU time is not seen)."""
    from scoder_lib.llm.base import GenRequest  # noqa: PLC0415
    from scoder_lib.llm.generator import make_backend  # noqa: PLC0415

    print(f"{label}: setting up ...", flush=True)
    start = time.perf_counter()
    backend = make_backend(spec, cache)
    if hasattr(backend, "start"):
        backend.start()  # llama.cpp: spawn the workers and load the model
    if warmup:  # engines that start lazily (vLLM in a worker): one token, counted as set-up
        backend.generate([GenRequest(prompt="Hi", max_new_tokens=1)])
    setup = time.perf_counter() - start
    print(f"{label}: generating {len(requests)} requests ...", flush=True)
    cpu0, start = _cpu_s(), time.perf_counter()
    results = backend.generate(requests)
    wall = time.perf_counter() - start
    backend.close()  # workers reaped: their CPU time is in RUSAGE_CHILDREN (it includes their model load)
    cpu = _cpu_s() - cpu0 if reaped else None
    tokens = sum(c.tokens for r in results for c in r.completions)
    out = {"backend": label, "setup_s": setup, "tokens": tokens, "wall_s": wall, "tok_s": tokens / wall, "cpu_s": cpu}
    print(f"{label}: {tokens} tokens in {wall:.1f}s = {out['tok_s']:.1f} tok/s (set-up {setup:.1f}s)", flush=True)
    return out


def main() -> None:
    import scoder_lib  # noqa: F401, PLC0415  (OMP_WAIT_POLICY before torch)
    from scoder_lib.core.config import REPO_ROOT, LlamaCppOptions, ModelSpec  # noqa: PLC0415
    from scoder_lib.core.logs import setup_logging  # noqa: PLC0415

    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--n", type=int, default=64, help="held-out prompts (the first n)")
    ap.add_argument("--adapter", help="a LoRA synthesizer checkpoint folder to bench instead of the base model")
    ap.add_argument("--vllm-python", help="interpreter with vLLM's CPU build, e.g. .venv-vllm/bin/python")
    ap.add_argument("--skip", default="", help="runs to leave out, comma-separated: transformers, llamacpp, llamacpp-1")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()
    setup_logging()
    requests, cfg = _requests(args.profile, args.n)
    cache = cfg.resolve(cfg.cache_dir)
    synth = cfg.synthesizer if args.adapter is None else cfg.synthesizer.model_copy(update={"name": args.adapter})
    s = requests[0]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()}; model {synth.name}; "
        f"{len(requests)} prompts, T={s.temperature} top_p={s.top_p} max_new_tokens={s.max_new_tokens}",
        flush=True,
    )
    runs = []
    if "transformers" not in args.skip.split(","):
        spec = synth.model_copy(update={"backend": "transformers"})
        runs.append(_bench(f"transformers (batch {spec.batch_size})", spec, cache, requests))
    for key, opts in (
        ("llamacpp", LlamaCppOptions(workers=2, threads=1)),  # the defaults: 16 slots, float16 (merged)
        ("llamacpp-1", LlamaCppOptions(workers=2, threads=1, slots=1, weights="gguf")),  # one row at a time
    ):
        if key not in args.skip.split(","):
            spec = synth.model_copy(update={"backend": "llamacpp", "llamacpp": opts})
            label = f"llamacpp (2 workers x 1 thread x {opts.slots} slots, {opts.weights})"
            runs.append(_bench(label, spec, cache, requests))
    if args.vllm_python:
        python = args.vllm_python if os.path.isabs(args.vllm_python) else str(REPO_ROOT / args.vllm_python)
        spec = ModelSpec(name=synth.name, backend="vllm", python=python)
        runs.append(_bench("vllm-cpu", spec, cache, requests, warmup=True, reaped=False))
    _report(runs, args.out)


def _report(runs: list[dict], out: str | None) -> None:
    base = next((r["tok_s"] for r in runs if r["backend"].startswith("transformers")), None)
    vllm = next((r["tok_s"] for r in runs if r["backend"].startswith("vllm")), None)
    for r in runs:
        r["ratio_vs_transformers"] = r["tok_s"] / base if base else None
        r["ratio_vs_vllm"] = r["tok_s"] / vllm if vllm else None
    print(
        "\n| backend | set-up s | generated tokens | wall s | tok/s | vs transformers | vs vLLM-CPU | CPU s |"
        " tok per 2 CPU-s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        ratios = " | ".join(f"{x:.2f}x" if x else "-" for x in (r["ratio_vs_transformers"], r["ratio_vs_vllm"]))
        row = f"| {r['backend']} | {r['setup_s']:.1f} | {r['tokens']} | {r['wall_s']:.1f} | {r['tok_s']:.1f} |"
        cpu = "- | -" if r["cpu_s"] is None else f"{r['cpu_s']:.0f} | {r['tokens'] / max(r['cpu_s'] / 2, 1e-9):.1f}"
        print(row + f" {ratios} | {cpu} |")
    print(f"load average after: {os.getloadavg()}")
    if out:
        with open(out, "w") as fh:
            json.dump({"runs": runs, "loadavg": os.getloadavg()}, fh, indent=2)


if __name__ == "__main__":
    main()
