"""Benchmark: batched per-sample gradient features vs LESS's one-sample loop, on SmolLM2-135M.

    .venv/bin/python scripts/bench_influence.py [--samples 24] [--last-layers 4] [--dim 8192] [--rounds 1]

Trains a tiny LoRA checkpoint with train.sft on 8 synthesis-like examples (2 steps; cached under
.cache/scoder/bench_influence), then computes Adam-direction features of `--samples` examples
(284-397 tokens: the real synthesis prompt, a snippet, a problem, a solution and a test) in a
fresh child process per method, so each one's peak RSS is its own:
  loop     LESS's way: one forward/backward per sample with the model's own loss, gradients
           projected every 16 samples (LESS's project_interval);
  bs1      this library, one sample per forward (response-only head, no weight gradients);
  batched  this library: gradient_features (one backward per batch, one projection per shard).
Prints samples per wall second and per CPU second (split into gradients and projection), the
ratios, the max abs difference of the features, and each method's own peak RSS. On a shared
machine wall time follows other jobs' load; CPU time (all threads) is the steadier measure, and
`--rounds` interleaves repeated runs (the least disturbed run of each method is compared).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import gc
import importlib
import json
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import transformers

import scoder_lib  # noqa: F401  (thread settings before torch)
from scoder_lib.core.config import REPO_ROOT, InfluenceOptions, LoraOptions, ModelSpec, TrainOptions
from scoder_lib.core.logs import setup_logging
from scoder_lib.llm.models import prepare
from scoder_lib.method.influence import features as inf_features
from scoder_lib.method.influence import gradients as inf_grads
from scoder_lib.method.influence import projection as inf_proj
from scoder_lib.method.synthesis import messages, render
from scoder_lib.method.train import Example, encode, sft

CACHE = REPO_ROOT / ".cache" / "scoder"
LESS_PROJECT_INTERVAL = 16


def functions(limit: int) -> list[str]:
    """Source of small standard-library functions: stand-ins for snippets and solutions."""

    out: dict[str, None] = {}  # ordered, without repeats
    for name in (
        "ast",
        "json.encoder",
        "textwrap",
        "argparse",
        "tempfile",
        "string",
        "shutil",
        "pathlib",
        "inspect",
        "random",
        "statistics",
        "fractions",
        "difflib",
        "csv",
        "calendar",
    ):
        src = Path(importlib.import_module(name).__file__).read_text()
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.FunctionDef) and 3 <= node.end_lineno - node.lineno <= 20:
                out[textwrap.dedent(ast.get_source_segment(src, node, padded=True))] = None
    return list(out)[:limit]


def make_examples(tok, n: int, lo: int = 256, hi: int = 400) -> list[Example]:
    """Synthesis-shaped examples (real prompt template; problem, solution, tests), lengths spread
    evenly over lo-hi tokens so that batches pad as real ones do."""
    pool, found = functions(8000), []
    for snippet, solution in zip(pool[::2], pool[1::2]):
        name = solution.split("(")[0].removeprefix("def ").strip()
        problem = f"Write a Python function `{name}` that behaves like the one described by its docstring and body."
        ex = Example.of(messages(snippet), render(problem, solution, f"assert callable({name})\n"))
        size = len(encode(tok, ex, 10_000)["input_ids"])
        if lo <= size <= hi:
            found.append((size, len(found), ex))
        if len(found) >= 4 * n:
            break
    by_size = sorted(found)
    if len(by_size) < n:
        raise SystemExit(f"only {len(by_size)} examples of {lo}-{hi} tokens in the pool; ask for fewer")
    picked = sorted(by_size[round(i)] for i in np.linspace(0, len(by_size) - 1, n))
    return [ex for _, _, ex in sorted(picked, key=lambda t: t[1])]


def checkpoint(ref, train: list[Example], last_layers: int | None) -> Path:
    opts = TrainOptions(
        max_steps=2,
        batch_size=4,
        learning_rate=2e-4,
        num_checkpoints=1,
        max_seq_len=512,
        lora=LoraOptions(r=16, alpha=32, last_layers=last_layers),
    )
    out = CACHE / "bench_influence" / f"last{last_layers or 'all'}"
    return sft(train, ref.path, out, opts, ref.fingerprint).final


def child(method: str, ckpt: Path, samples: list[Example], opts: InfluenceOptions, out: Path) -> None:
    """Run one method, write its features and print its timings as JSON (last stdout line)."""
    loaded = inf_features.load_checkpoint(ckpt)  # loading is the same for all methods: not timed
    rss_loaded = reset_peak_rss()
    proj_s, proj_cpu = [0.0], [0.0]
    real = inf_proj.Projector.project

    def timed(self, vectors):
        t, c = time.perf_counter(), time.process_time()
        try:
            return real(self, vectors)
        finally:
            proj_s[0] += time.perf_counter() - t
            proj_cpu[0] += time.process_time() - c

    inf_proj.Projector.project = timed
    start, cpu = time.perf_counter(), time.process_time()
    if method == "loop":
        feats = less_loop(loaded, ckpt, samples, opts)
    else:
        bs = 1 if method == "bs1" else opts.batch_size
        feats = inf_features.gradient_features(
            ckpt, samples, kind="adam", opts=opts.model_copy(update={"batch_size": bs}), max_seq_len=512
        )
    total, cpu = time.perf_counter() - start, time.process_time() - cpu
    np.save(out / f"{method}.npy", feats)
    print(
        json.dumps(
            {
                "method": method,
                "total_s": total,
                "proj_s": proj_s[0],
                "cpu_s": cpu,
                "proj_cpu_s": proj_cpu[0],
                "n": len(samples),
                "params": loaded.layout.total,
                "rss_loaded_mb": rss_loaded,
                "peak_rss_mb": peak_rss(),
            }
        )
    )


def reset_peak_rss() -> float:
    """Current RSS (MB), and restart the peak count there (Linux: clear_refs 5 resets VmHWM).

    Why: from_pretrained's own peak would otherwise hide the method's (ru_maxrss never resets).
    """

    gc.collect()
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def peak_rss() -> float:
    """Peak RSS (MB) since reset_peak_rss (or since start where the reset is unavailable)."""
    try:
        return _status_mb("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(field)


def less_loop(loaded, ckpt: Path, samples: list[Example], opts: InfluenceOptions) -> np.ndarray:
    """LESS's collect_grads: per-sample backward, Adam transform, project every 16 samples."""
    transform = inf_features._transform(ckpt, loaded.layout)
    projector = inf_proj.Projector(opts.projection_dim, opts.projection_seed)
    rows = [encode(loaded.tok, e, 512) for e in samples]
    feats = []
    for s in range(0, len(rows), LESS_PROJECT_INTERVAL):
        grads = inf_grads.loop_grads(loaded.model, loaded.layout, rows[s : s + LESS_PROJECT_INTERVAL])
        feats.append(inf_proj.l2_normalise(projector.project(transform(grads))))
    return np.concatenate(feats)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--dim", type=int, default=8192)
    ap.add_argument("--last-layers", type=int, default=4, help="LoRA on the last N layers (0: all)")
    ap.add_argument("--methods", default="loop,bs1,batched")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    setup_logging()

    ref = prepare(ModelSpec(name="smollm2-135m-instruct"), CACHE)
    tok = transformers.AutoTokenizer.from_pretrained(ref.path)
    ckpt = checkpoint(ref, make_examples(tok, 8), args.last_layers or None)  # fixed, whatever --samples is
    samples = make_examples(tok, args.samples)
    opts = InfluenceOptions(projection_dim=args.dim, batch_size=args.batch_size)
    if args.child:
        return child(args.child, ckpt, samples, opts, Path(args.out))
    report(args, ckpt, samples, tok)


def report(args: argparse.Namespace, ckpt: Path, samples: list[Example], tok) -> None:
    lengths = [len(encode(tok, e, 512)["input_ids"]) for e in samples]
    print(
        f"checkpoint {ckpt} (LoRA r=16 on {'all' if not args.last_layers else f'the last {args.last_layers}'} "
        f"layers); {len(samples)} samples of {min(lengths)}-{max(lengths)} tokens (mean {np.mean(lengths):.0f}); "
        f"D={args.dim}, batch {args.batch_size}; {args.rounds} round(s), methods interleaved"
    )
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):  # interleaved: load from other jobs drifts over minutes
            for method in args.methods.split(","):
                r = run_child(args, method, tmp)
                runs.setdefault(method, []).append(r)
                print_row(r)
    best = {m: min(rs, key=lambda r: r["cpu_s"]) for m, rs in runs.items()}  # least disturbed run
    base = best.get("loop")
    for method, r in best.items():
        if base is None or method == "loop":
            continue
        ratio = {k: base[k] / r[k] for k in ("total_s", "cpu_s", "proj_cpu_s")}
        grads = (base["cpu_s"] - base["proj_cpu_s"]) / (r["cpu_s"] - r["proj_cpu_s"])
        print(
            f"{method} vs loop (best of {args.rounds}): {ratio['cpu_s']:.2f}x less CPU time "
            f"({ratio['total_s']:.2f}x wall); gradients {grads:.2f}x, projection {ratio['proj_cpu_s']:.2f}x; "
            f"features max abs diff {np.abs(r['feats'] - base['feats']).max():.2e}"
        )


def run_child(args: argparse.Namespace, method: str, tmp: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--samples",
        str(args.samples),
        "--batch-size",
        str(args.batch_size),
        "--dim",
        str(args.dim),
        "--last-layers",
        str(args.last_layers),
        "--child",
        method,
        "--out",
        tmp,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{method} failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r["feats"] = np.load(Path(tmp) / f"{method}.npy")
    return r


def print_row(r: dict) -> None:
    print(
        f"{r['method']:>8}: {r['n'] / r['total_s']:.3f} samples/s wall, {r['n'] / r['cpu_s']:.3f} per CPU-s "
        f"({r['total_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU of which projection {r['proj_cpu_s']:.1f} s); "
        f"peak RSS {r['peak_rss_mb']:.0f} MB, +{r['peak_rss_mb'] - r['rss_loaded_mb']:.0f} MB over the loaded "
        f"model; P={r['params']:,}",
        flush=True,
    )


if __name__ == "__main__":
    main()
