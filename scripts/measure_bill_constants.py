"""Measure the CPU constants of the bill (`scoder_lib/pipeline/bill_constants.py`) on this machine.

    PYTHONPATH=. .venv/bin/python scripts/measure_bill_constants.py [--check] [--out measured.json]

What it measures, with SmolLM2-135M-Instruct and the committed seed set:
  tokens     characters per token of the seed set and benchmark prompts; chat-template tokens per prompt
  generate   a backend's decoded tokens/s at batch 1, 8 and 16 (synthesis prompts, sampled; `--backend`,
             default transformers: the figure for CPU_GEN_TOK_S[<backend>]),
             and how much of max_new_tokens the base model fills (synthesis, sampled; HumanEval, greedy)
  train      LoRA SFT tokens/s with tiny's seed-stage options (last 8 layers, r 32), a few steps
  gradients  per-sample gradient features (samples/s, tokens/s) at a checkpoint of that training, and the
             projection's block generation (ns per parameter x dimension)
  rate       seconds per candidate of the digit rater (Z=5 aspects, shared prefix)
  weights    the aspect-weight fit's cost per gradient step (numpy)
  sandbox    programs/s of the sandbox (2 workers, the seed set's own tests)
  overhead   importing the heavy stack and loading the model

Rates are work / (CPU time / torch threads): CPU time, not wall time, so a machine loaded by other
work still measures about what a quiet one does (the two threads' overlap is assumed perfect, which
flatters a quiet machine by a few percent). The sandbox runs in child processes: its rate is wall time.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import scoder_lib  # noqa: F401  (OMP_WAIT_POLICY before torch)

T0 = time.process_time()
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402, F401
from peft import PeftModel  # noqa: E402, F401

IMPORT_CPU_S = time.process_time() - T0

from scoder_lib.core.config import (  # noqa: E402
    REPO_ROOT,
    AspectWeights,
    InfluenceOptions,
    LoraOptions,
    ModelSpec,
    Sampling,
    TrainOptions,
)
from scoder_lib.llm.base import GenRequest  # noqa: E402
from scoder_lib.llm.generator import make_backend  # noqa: E402
from scoder_lib.llm.models import prepare  # noqa: E402
from scoder_lib.llm.transformers_backend import TransformersBackend  # noqa: E402
from scoder_lib.method import scoring, seed  # noqa: E402
from scoder_lib.method.influence.features import gradient_features  # noqa: E402
from scoder_lib.method.influence.projection import RademacherProjector  # noqa: E402
from scoder_lib.method.rating import Rater  # noqa: E402
from scoder_lib.method.synthesis import messages  # noqa: E402
from scoder_lib.method.train import encode, sft  # noqa: E402
from scoder_lib.method.weights import fit_aspect_weights  # noqa: E402
from scoder_lib.sandbox.execution import run_many  # noqa: E402

CACHE = REPO_ROOT / ".cache" / "scoder"
MODEL = "smollm2-135m-instruct"
THREADS = torch.get_num_threads()
ASPECTS = ["clarity", "consistency", "correctness", "relevance", "difficulty"]
# (batch size, prompts, max new tokens) of each generation measurement, and the other sizes.
FULL = {
    "generate": ((1, 1, 96), (8, 8, 512), (16, 16, 256)),
    "fill_batch": 8,
    "bench": 8,
    "train_steps": 4,
    "gradients": 8,
    "rate": 3,
    "sandbox": 100,
}
PARTS = "tokens,sandbox,rate,weights,train,gradients,generate"
CHECK = {
    "generate": ((1, 1, 4), (2, 2, 8)),
    "fill_batch": 2,
    "bench": 2,
    "train_steps": 2,
    "gradients": 2,
    "rate": 1,
    "sandbox": 4,
}


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, CPU seconds / threads, wall seconds)."""
    c, w = time.process_time(), time.perf_counter()
    out = fn()
    return out, (time.process_time() - c) / THREADS, time.perf_counter() - w


def _jsonl_gz(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt") as fh:
        return [json.loads(line) for line in fh]


def measure_tokens(tok: Any, rows: list[Any]) -> dict[str, float]:
    texts = [r.snippet for r in rows] + [seed.response(r) for r in rows]
    bench = REPO_ROOT / ".data" / "benchmarks" / "HumanEvalPlus-v0.1.10.jsonl.gz"
    if bench.exists():
        texts += [r["prompt"] for r in _jsonl_gz(bench)]
    chars = sum(map(len, texts))
    tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    msgs = [messages(r.snippet, r.prompt_version) for r in rows[:40]]
    templ = [
        len(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
        for m in msgs
    ]
    raw = [sum(len(tok(x["content"], add_special_tokens=False)["input_ids"]) for x in m) for m in msgs]
    return {
        "chars_per_token": chars / tokens,
        "chat_overhead_tokens": statistics.mean(a - b for a, b in zip(templ, raw)),
        "texts": len(texts),
    }


def measure_generation(name: str, rows: list[Any], plan: dict[str, Any]) -> dict[str, Any]:
    """Decoding speed of backend `name` at each planned batch size (one backend per size, as stages build them)."""
    out: dict[str, Any] = {"backend": name}
    for batch, n, max_new in plan["generate"]:
        backend = make_backend(ModelSpec(name=MODEL, backend=name, batch_size=batch), CACHE)
        sampling = Sampling(temperature=0.7, top_p=0.95, max_new_tokens=max_new)
        reqs = [GenRequest.chat(messages(r.snippet, "v1"), sampling, seed=i) for i, r in enumerate(rows[:n])]
        res, cpu, wall = timed(lambda reqs=reqs, backend=backend: backend.generate(reqs))
        made = sum(c.tokens for r in res for c in r.completions)
        out[f"batch_{batch}"] = {"tokens": made, "max_new": max_new, "tok_s": made / cpu, "wall_tok_s": made / wall}
        if batch == plan["fill_batch"]:
            out["synthesis_fill"] = made / (n * max_new)
    he = REPO_ROOT / ".data" / "benchmarks" / "HumanEvalPlus-v0.1.10.jsonl.gz"
    if he.exists():
        from scoder_lib.llm import student_format  # noqa: PLC0415 - only this measurement needs it

        prompts = [r["prompt"] for r in _jsonl_gz(he)][: plan["bench"]]
        greedy = Sampling(temperature=0.0, max_new_tokens=384)
        reqs = [
            GenRequest.chat(
                [
                    {"role": "user", "content": student_format.user_turn(p)},
                    {"role": "assistant", "content": student_format.response_prefix()},
                ],
                greedy,
                stop=("\n```",),
            )
            for p in prompts
        ]
        res = make_backend(ModelSpec(name=MODEL, backend=name, batch_size=8), CACHE).generate(reqs)
        out["benchmark_fill"] = sum(r.completions[0].tokens for r in res) / (len(reqs) * 384)
    return out


def measure_training(base: str, rows: list[Any], tok: Any, folder: Path, steps: int) -> dict[str, Any]:
    """One step and `steps` steps of the same SFT: the difference is the per-step cost, the rest is set-up."""
    examples = [seed.to_example(r) for r in rows]
    fits = [e for e in (encode(tok, x, 1024, truncate=False) for x in examples) if e is not None]
    mean_len = statistics.mean(len(e["input_ids"]) for e in fits)
    cpu = {}
    for n in (1, steps):
        opts = TrainOptions(
            epochs=2,
            batch_size=4,
            learning_rate=2e-3,
            max_seq_len=1024,
            num_checkpoints=1,
            max_steps=n,
            lora=LoraOptions(r=32, alpha=64, last_layers=8),
        )
        res, cpu[n], _ = timed(lambda opts=opts, n=n: sft(examples, base, folder / f"s{n}", opts, "measure"))
    per_step = (cpu[steps] - cpu[1]) / (steps - 1)
    tokens = 4 * mean_len  # per step: batch 4, random examples of the ones that fit
    return {
        "tok_s": tokens / per_step,
        "setup_s": cpu[1] - per_step,
        "mean_example_tokens": mean_len,
        "checkpoint": str(res.final),
    }


def measure_gradients(ckpt: Path, rows: list[Any], tok: Any, n: int) -> dict[str, Any]:
    """Features of 2 examples (loads the checkpoint), then of n others (resident): set-up and per-sample cost."""
    # A 16-dimensional projection: the figure is the gradient pass alone; block generation is timed apart.
    opts = InfluenceOptions(projection_dim=16, batch_size=4)
    first = [seed.to_example(r) for r in rows[:2]]
    rest = [seed.to_example(r) for r in rows[2 : 2 + n]]
    _, cpu1, _ = timed(lambda: gradient_features(ckpt, first, kind="adam", opts=opts, max_seq_len=1024))
    _, cpu, _ = timed(lambda: gradient_features(ckpt, rest, kind="adam", opts=opts, max_seq_len=1024))
    tokens = sum(len(e["input_ids"]) for e in (encode(tok, x, 1024) for x in rest) if e is not None)
    proj = RademacherProjector(8192, 0)  # the LESS projector (projection: rademacher)
    rows_per_block = 2048
    _, pcpu, _ = timed(lambda: [proj._block_t(k, rows_per_block) for k in range(8)])
    return {
        "samples_s": len(rest) / cpu,
        "tok_s": tokens / cpu,
        "setup_s": cpu1 - 2 * cpu / len(rest),
        "projection_block_ns_per_entry": 1e9 * pcpu / (8 * rows_per_block * 8192),
    }


def measure_rating(ref: Any, rows: list[Any], n: int) -> dict[str, Any]:
    rater = Rater(ref, ModelSpec(name=MODEL), None)
    aspects = ASPECTS
    pick = rows[: n + 1]
    rater.rate([scoring.rating_prompt(r.snippet, seed.response(r), aspects) for r in pick[:1]])  # warm-up
    rater.forward_tokens = 0
    prompts = [scoring.rating_prompt(r.snippet, seed.response(r), aspects) for r in pick[1:]]
    _, cpu, _ = timed(lambda: rater.rate(prompts))
    return {"s_per_candidate": cpu / len(prompts), "forward_tokens_per_candidate": rater.forward_tokens / len(prompts)}


def measure_weight_fit() -> dict[str, float]:
    """The aspect-weight fit (numpy, one thread) at 12 and 1,000 rows: per-step cost and its per-row part."""
    rng = np.random.default_rng(0)
    opts = AspectWeights(bootstrap=20, cv_folds=5, steps=3000)
    per_step = {}
    for rows in (6, 500):
        x = rng.uniform(0, 9, (rows, 5)), rng.uniform(0, 9, (rows, 5))
        _, cpu, _ = timed(lambda x=x: fit_aspect_weights(x[0], x[1], ASPECTS, opts, seed=0))
        per_step[2 * rows] = cpu * THREADS / ((1 + opts.bootstrap + opts.cv_folds) * opts.steps)  # one thread
    return {"step_s_12_rows": per_step[12], "step_s_per_row": (per_step[1000] - per_step[12]) / 988}


def measure_sandbox(rows: list[Any], n: int) -> dict[str, float]:
    jobs = [(r.solution, r.tests) for r in rows[:n]]
    run_many(jobs[:4], workers=2)  # starts the sandbox workers
    _, _, wall = timed(lambda: run_many(jobs, workers=2))
    return {"programs_s_wall": len(jobs) / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="a few seconds of each measurement: does the script run?")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--backend", default="transformers", help="the generation backend to measure (model.backend)")
    ap.add_argument("--only", default=PARTS, help=f"comma-separated parts to measure (default: {PARTS})")
    args = ap.parse_args()
    plan = CHECK if args.check else FULL
    rows = seed.load(REPO_ROOT / "data" / "seed" / "seed_v1.jsonl").train
    ref, load_cpu, _ = timed(lambda: prepare(ModelSpec(name=MODEL), CACHE))
    backend, bcpu, _ = timed(lambda: TransformersBackend(ref, ModelSpec(name=MODEL)))
    tok = backend.tok
    load = os.getloadavg()
    only = set(args.only.split(","))
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "threads": THREADS,
        "loadavg_1m_start": load[0],
        "torch": torch.__version__,
        "import_cpu_s": IMPORT_CPU_S / THREADS,
        "model_load_cpu_s": (load_cpu + bcpu),
    }
    if "tokens" in only:
        report["tokens"] = measure_tokens(tok, rows)
    if "sandbox" in only:
        report["sandbox"] = measure_sandbox(rows, plan["sandbox"])
    if "rate" in only:
        report["rate"] = measure_rating(ref, rows, plan["rate"])
    if "weights" in only:
        report["weights"] = measure_weight_fit()
    if only & {"train", "gradients"}:
        with tempfile.TemporaryDirectory() as tmp:
            report["train"] = measure_training(ref.path, rows, tok, Path(tmp) / "sft", plan["train_steps"])
            ckpt = Path(report["train"].pop("checkpoint"))
            if "gradients" in only:
                report["gradients"] = measure_gradients(ckpt, rows, tok, plan["gradients"])
    if "generate" in only:
        report["generate"] = measure_generation(args.backend, rows, plan)
    report["loadavg_1m_end"] = os.getloadavg()[0]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
