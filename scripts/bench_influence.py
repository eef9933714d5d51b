"""Benchmark: influence projection and per-sample features, today's ways vs the new ones, in one run.

    .venv/bin/python scripts/bench_influence.py [--rounds 2] [--candidates 24] [--targets 8]

1. Projection, seconds per sample at D = 8192, rows projected 16 at a time (LESS's interval, the
   paper's batch): the dense Rademacher projector (`RademacherProjector`, LESS's) vs the sparse JL
   one (`SparseProjector`), for P = 1e6, 1e7, 1e8, 3.2e8 (the paper's LoRA). The dense one is
   measured up to --dense-max-params and extrapolated linearly beyond (its cost is a fixed price per
   2048-parameter block: linear in P by construction); the sparse one is measured at every P,
   streamed in weight-sized pieces, its hash codes (computed once per run) shown apart.
2. Features on the CPU, real SmolLM2-135M with the `tiny` LoRA layout (r=32 on q/k/v/o/gate/up/
   down of the last 8 of 30 layers), M = 2 checkpoints trained here, candidates (Adam directions)
   and teacher targets (gradients) from data/seed/seed_v1.jsonl rendered as notebook 04 does,
   responses cut to spread the samples over 300-400 tokens. Each method runs in a fresh child
   process (its own peak RSS), rounds interleaved; all use the sparse projection, so features compare:
     loop     LESS's way: one forward/backward per sample with the model's own loss;
     batched  one backward per batch, response-only head, whole model for every checkpoint;
     prefix   batched + the frozen prefix (first 22 layers) run once per sample for both checkpoints;
     new      prefix + each LoRA layer run as one merged matmul (PEFT's forward: four passes).
3. Ranking: Spearman of the candidates' influence from projected features (sparse at 8192 and
   2048, dense at 8192) vs from exact (unprojected) cosines, on those candidates. With
   `--run RUN --iteration T` (and SCODER_OUTPUTS if the run is elsewhere): on a finished iteration
   of a real run instead, its own stored scores ranked beside them; nothing is trained.
On a shared machine wall time follows other jobs' load: CPU time (all threads) is the steadier
measure, and the least disturbed run of each method is compared.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import transformers

import scoder_lib  # noqa: F401  (thread settings before torch)
from scoder_lib.core.config import REPO_ROOT, InfluenceOptions, LoraOptions, ModelSpec, TrainOptions
from scoder_lib.core.io import read_jsonl
from scoder_lib.core.logs import setup_logging
from scoder_lib.core.run import Run
from scoder_lib.llm.models import prepare
from scoder_lib.method import lineage, seed, synthesis
from scoder_lib.method.influence import checkpoints as inf_checkpoints
from scoder_lib.method.influence import features as inf_features
from scoder_lib.method.influence import projection as inf_proj
from scoder_lib.method.influence import scores as inf_scores
from scoder_lib.method.train import Example, encode, sft

CACHE = REPO_ROOT / ".cache" / "scoder"
SEEDS = REPO_ROOT / "data" / "seed" / "seed_v1.jsonl"
MAX_SEQ_LEN = 512
ROWS = 16  # rows per projection call
PIECE = 2_424_832  # parameters per streamed piece: the paper's largest LoRA weight (18944 x 128)


# ----------------------------------------------------------------------------- 1. projection
def projection_table(dim: int, rounds: int, dense_max: int, sizes: list[int]) -> list[dict]:
    """Seconds per sample (CPU and wall) for each P, dense vs sparse, repetitions interleaved (the
    dense one once above 1e6 parameters: minutes a call)."""
    rows = []
    x = torch.randn(ROWS, PIECE)
    for p in sizes:
        dense, sparse, codes = [], [], _codes_time(p, dim)
        for k in range(rounds):
            if p <= dense_max and (k == 0 or p <= 10**6):
                dense.append(_dense_time(p, dim))
            sparse.append(_sparse_time(p, dim, x))
        rows.append({"P": p, "dense": min(dense) if dense else None, "sparse": min(sparse), "codes": codes})
        print(f"  P={p:.1e}: dense {rows[-1]['dense']}, sparse {rows[-1]['sparse']}, codes {codes}", flush=True)
    slope = _dense_slope(rows)
    for r in rows:
        r["dense_measured"] = r["dense"] is not None
        if r["dense"] is None:
            r["dense"] = tuple(s * r["P"] for s in slope)
    return rows


def _timed(fn) -> tuple[float, float]:
    gc.collect()
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def _dense_time(p: int, dim: int) -> tuple[float, float]:
    x = torch.randn(ROWS, p)
    cpu, wall = _timed(lambda: inf_proj.RademacherProjector(dim, 0).project(x))
    return cpu / ROWS, wall / ROWS


def _codes_time(p: int, dim: int) -> tuple[float, float]:
    """Hash codes for P parameters, once per run (the cache keeps them: 5 bytes a parameter)."""
    proj = inf_proj.SparseProjector(dim, 0, cache_bytes=0)
    return _timed(lambda: [proj.codes(o, min(PIECE, p - o)) for o in range(0, p, PIECE)])


_SPARSE: dict[int, inf_proj.SparseProjector] = {}


def _sparse_time(p: int, dim: int, x: torch.Tensor) -> tuple[float, float]:
    """Per sample: every piece sketched (codes cached from an untimed first pass), as features do."""
    proj = _SPARSE.setdefault(dim, inf_proj.SparseProjector(dim, 0, cache_bytes=6 << 30))
    cpu = wall = 0.0
    for offset in range(0, p, PIECE):
        size = min(PIECE, p - offset)
        proj.codes(offset, size)
        block = x[:, :size].clone()  # a fresh gradient block, as grad_blocks yields it
        c, w = _timed(lambda block=block, offset=offset: proj.sketch_(block, offset))
        cpu, wall = cpu + c, wall + w
    return cpu / ROWS, wall / ROWS


def _dense_slope(rows: list[dict]) -> tuple[float, float]:
    measured = [r for r in rows if r["dense"] is not None]
    big = max(measured, key=lambda r: r["P"])
    return big["dense"][0] / big["P"], big["dense"][1] / big["P"]


def print_projection(rows: list[dict], dim: int) -> None:
    print(f"\nProjection at D={dim}, {ROWS} rows a call: seconds per sample (CPU / wall)")
    print(f"{'P':>9} | {'dense (LESS)':>22} | {'sparse JL':>20} | {'ratio CPU':>9} | {'codes once (CPU s)':>18}")
    for r in rows:
        mark = "" if r["dense_measured"] else " (extrap.)"
        dense = f"{r['dense'][0]:.3g} / {r['dense'][1]:.3g}{mark}"
        sparse = f"{r['sparse'][0]:.3g} / {r['sparse'][1]:.3g}"
        ratio = r["dense"][0] / r["sparse"][0]
        print(f"{r['P']:>9.1e} | {dense:>22} | {sparse:>20} | {ratio:>8.0f}x | {r['codes'][0]:>18.2f}")


# ----------------------------------------------------------------------------- 2. features on the CPU
METHODS = {  # name: (batched, reuse_prefix, merge_lora)
    "loop": (False, False, False),
    "batched": (True, False, False),
    "prefix": (True, True, False),
    "new": (True, True, True),
}


def cut(tok, ex: Example, total: int) -> Example | None:
    """The example with its response cut so that prompt + response is about `total` tokens."""
    prompt = sum(label == -100 for label in encode(tok, ex, 10**6)["labels"])
    keep = total - prompt - 1  # the EOS that encode appends
    if keep < 32:
        return None
    ids = tok(ex.response, add_special_tokens=False)["input_ids"][:keep]
    return Example(ex.messages, tok.decode(ids))


def bench_data(tok, n_cand: int, n_tgt: int) -> tuple[list[Example], list[Example], list[Example]]:
    """(train, candidates, targets): seed samples as notebook 04 renders them; the shortest prompts
    become candidates and targets, cut to lengths spread evenly over 300-400 tokens."""
    rows = sorted(seed.load(SEEDS).train, key=lambda r: len(synthesis.messages(r.snippet)[1]["content"]))
    examples = [seed.to_example(r, "v1") for r in rows]
    picked, lengths = [], np.linspace(300, 400, n_cand + n_tgt).round().astype(int)
    rng = np.random.default_rng(0)
    for ex, total in zip(examples, rng.permutation(lengths)):
        if (short := cut(tok, ex, int(total))) is not None:
            picked.append(short)
    if len(picked) < n_cand + n_tgt:
        raise SystemExit(f"only {len(picked)} seed samples fit 300-400 tokens; ask for fewer")
    train = examples[-8:]  # the longest prompts: no overlap with the picked ones
    return train, picked[:n_cand], picked[n_cand : n_cand + n_tgt]


def train_checkpoints(ref, train: list[Example], workdir: Path) -> list[Path]:
    """M = 2 checkpoints with tiny's LoRA layout (reused when the same run is already there)."""
    opts = TrainOptions(
        max_steps=4,
        batch_size=2,
        learning_rate=1e-3,
        num_checkpoints=2,
        max_seq_len=MAX_SEQ_LEN,
        long_examples="truncate",
        lora=LoraOptions(r=32, alpha=64, last_layers=8),
    )
    return sft(train, ref.path, workdir / "synthesizer", opts, ref.fingerprint).checkpoints


def child(method: str, ckpts: list[Path], cands: list[Example], targets: list[Example], args) -> None:
    """One method: features of candidates and targets at every checkpoint; timings as JSON (last line)."""
    loaded = inf_checkpoints.load_checkpoint(ckpts[0])  # loading is the same for all methods: not timed
    rss_loaded = reset_peak_rss()
    batched, reuse, merge = METHODS[method]
    opts = InfluenceOptions(projection_dim=args.dim, batch_size=args.batch_size)
    common = {"opts": opts, "max_seq_len": MAX_SEQ_LEN, "batched": batched, "reuse_prefix": reuse, "merge_lora": merge}
    start, cpu = time.perf_counter(), time.process_time()
    cand = inf_features.checkpoint_features(ckpts, cands, kind="adam", **common)
    tgt = inf_features.checkpoint_features(ckpts, targets, kind="sgd", **common)
    total, cpu = time.perf_counter() - start, time.process_time() - cpu
    np.savez(Path(args.workdir) / f"{method}.npz", *cand, *tgt)
    print(
        json.dumps(
            {
                "method": method,
                "wall_s": total,
                "cpu_s": cpu,
                "n": (len(cands) + len(targets)) * len(ckpts),
                "params": loaded.layout.total,
                "prefix_layers": loaded.depth if reuse else 0,
                "rss_loaded_mb": rss_loaded,
                "peak_rss_mb": peak_rss(),
            }
        )
    )


def reset_peak_rss() -> float:
    """Current RSS (MB), and restart the peak count there (Linux: clear_refs 5 resets VmHWM)."""
    gc.collect()
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def peak_rss() -> float:
    return _status_mb("VmHWM")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(field)


def run_child(args, method: str) -> dict:
    cmd = [sys.executable, __file__, "--child", method, *_passthrough(args)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{method} failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(Path(args.workdir) / f"{method}.npz") as z:
        r["feats"] = [z[k] for k in sorted(z.files, key=lambda k: int(k.split("_")[1]))]
    return r


def _passthrough(args) -> list[str]:
    keys = ("candidates", "targets", "dim", "batch_size", "workdir")
    return [x for k in keys for x in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]


def features_table(args) -> dict[str, dict]:
    runs: dict[str, list[dict]] = {}
    for _ in range(args.rounds):  # interleaved: load from other jobs drifts over minutes
        for method in args.methods.split(","):
            r = run_child(args, method)
            runs.setdefault(method, []).append(r)
            print(
                f"  {method:>8}: {r['cpu_s']:.1f} s CPU, {r['wall_s']:.1f} s wall for {r['n']} sample-checkpoints; "
                f"peak RSS {r['peak_rss_mb']:.0f} MB (+{r['peak_rss_mb'] - r['rss_loaded_mb']:.0f} MB over "
                f"the loaded model)",
                flush=True,
            )
    return {m: min(rs, key=lambda r: r["cpu_s"]) for m, rs in runs.items()}  # the least disturbed run


def print_features(best: dict[str, dict], rounds: int) -> None:
    base = best.get("loop")
    print(f"\nFeatures on the CPU (best of {rounds}; P={next(iter(best.values()))['params']:,}):")
    print(f"{'method':>8} | {'CPU s':>7} | {'wall s':>7} | {'per sample-ckpt CPU':>19} | {'peak RSS +MB':>12} | ratio")
    for m, r in best.items():
        ratio = (
            "" if base is None else f"{base['cpu_s'] / r['cpu_s']:.2f}x CPU, {base['wall_s'] / r['wall_s']:.2f}x wall"
        )
        extra = r["peak_rss_mb"] - r["rss_loaded_mb"]
        print(
            f"{m:>8} | {r['cpu_s']:>7.1f} | {r['wall_s']:>7.1f} | {r['cpu_s'] / r['n']:>19.3f} | "
            f"{extra:>12.0f} | {ratio}"
        )
        if base is not None and m != "loop":
            diff = max(_rel_diff(a, b) for a, b in zip(r["feats"], base["feats"]))
            print(f"{'':>8}   features vs loop: max relative difference {diff:.2e}")


def _rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    norms = np.linalg.norm(b, axis=1)
    keep = norms > 0
    return float((np.linalg.norm(a - b, axis=1)[keep] / norms[keep]).max())


# ----------------------------------------------------------------------------- 3. ranking
def ranking(
    ckpts: list[Path],
    cands: list[Example],
    targets: list[Example],
    dims: tuple[int, ...],
    dense: bool,
    *,
    max_seq_len: int = MAX_SEQ_LEN,
    stored: np.ndarray | None = None,
) -> None:
    """Spearman of influence from projected vs exact features (projection is linear: projecting the
    exact unit vectors and normalising again gives the projected features). `stored`: the scores a
    run's notebook 04 wrote, ranked beside them."""
    opts = InfluenceOptions(projection="none", batch_size=4)
    common = {"opts": opts, "max_seq_len": max_seq_len}
    exact = [
        inf_features.checkpoint_features(ckpts, cands, kind="adam", **common),
        inf_features.checkpoint_features(ckpts, targets, kind="sgd", **common),
    ]
    lrs = [inf_scores.checkpoint_lr(c) for c in ckpts]
    scores = {"exact": inf_scores.influence_scores(exact[0], exact[1], lrs)}
    if stored is not None:
        scores["the run's own (04)"] = stored
    kinds = [("sjlt", d) for d in dims] + ([("rademacher", dims[0])] if dense else [])
    for kind, dim in kinds:
        proj = inf_proj.make_projector(kind, dim, 0)
        feats = [[inf_proj.l2_normalise(proj.project(f)) for f in side] for side in exact]
        scores[f"{kind} D={dim}"] = inf_scores.influence_scores(feats[0], feats[1], lrs)
    rho = pd.DataFrame(scores).rank().corr()["exact"]
    spread = scores["exact"].std()
    print(
        f"\nInfluence ranking of {len(cands)} candidates ({len(targets)} targets, M={len(ckpts)}), Spearman vs exact:"
    )
    for name, s in scores.items():
        if name != "exact":
            error = (s - scores["exact"]).std()
            print(f"  {name:>18}: {rho[name]:.4f}   (projection error {error:.3g} = {error / spread:.2f} x the spread)")
    print(f"  exact scores: mean {scores['exact'].mean():.4g}, spread (std) {spread:.3g}")


def ranking_on_run(run_name: str, iteration: int, dims: tuple[int, ...], dense: bool) -> None:
    """The ranking check on a finished iteration of a real run: its checkpoints, the candidates its
    03 selected, the targets its 04 drew, and the scores its 04 wrote (influence.jsonl)."""
    run = Run.open(run_name)
    cfg = run.cfg
    done = run.stage_dir("04_influence", iteration) / "influence.jsonl"
    if not done.exists():
        raise SystemExit(f"{done} is missing: run stage 04_influence@{iteration} of run '{run_name}' first")
    cands, ckpts, cand_examples, targets = lineage.influence_inputs(run, iteration)
    stored = pd.DataFrame(read_jsonl(done)).set_index("cand_id").loc[[c.cand_id for c in cands], "influence"]
    targets = inf_scores.pick_targets(targets, cfg.influence)
    print(
        f"run {run.dir}, iteration {iteration}: {len(cands)} candidates, {len(targets)} targets, "
        f"checkpoints {[c.name for c in ckpts]}; the run projected with {cfg.influence.projection} "
        f"D={cfg.influence.projection_dim}",
        flush=True,
    )
    ranking(
        ckpts,
        cand_examples,
        targets,
        dims,
        dense,
        max_seq_len=cfg.influence.train.max_seq_len,
        stored=stored.to_numpy(dtype=float),
    )


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", type=int, default=24)
    ap.add_argument("--targets", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--dim", type=int, default=8192)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--parts", default="projection,features,ranking")
    ap.add_argument("--dense-max-params", type=float, default=1e7, help="largest P the dense projector runs at")
    ap.add_argument("--sizes", default="1e6,1e7,1e8,3.2e8", help="parameter counts of the projection table")
    ap.add_argument(
        "--dense-ranking",
        action="store_true",
        help="also rank with the dense projection at the first of --ranking-dims (minutes)",
    )
    ap.add_argument("--ranking-dims", default="2048,8192,32768,131072", help="sparse projection sizes ranked")
    ap.add_argument("--run", default=None, help="rank on this run's iteration instead (part 3 only)")
    ap.add_argument("--iteration", type=int, default=1, help="with --run: the iteration to rank")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "scoder-bench-influence"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    setup_logging()
    dims = tuple(int(float(d)) for d in args.ranking_dims.split(","))
    if args.run:
        return ranking_on_run(args.run, args.iteration, dims, args.dense_ranking)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)

    ref = prepare(ModelSpec(name="smollm2-135m-instruct"), CACHE)
    tok = transformers.AutoTokenizer.from_pretrained(ref.path)
    train, cands, targets = bench_data(tok, args.candidates, args.targets)
    ckpts = train_checkpoints(ref, train, Path(args.workdir))
    if args.child:
        return child(args.child, ckpts, cands, targets, args)
    lengths = [len(encode(tok, e, MAX_SEQ_LEN)["input_ids"]) for e in cands + targets]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; checkpoints {[c.name for c in ckpts]} in "
        f"{args.workdir}; {len(cands)} candidates + {len(targets)} targets of {min(lengths)}-{max(lengths)} "
        f"tokens (mean {np.mean(lengths):.0f}); D={args.dim}, batch {args.batch_size}, {args.rounds} round(s)",
        flush=True,
    )
    parts = args.parts.split(",")
    if "projection" in parts:
        sizes = [int(float(p)) for p in args.sizes.split(",")]
        print_projection(projection_table(args.dim, args.rounds, int(args.dense_max_params), sizes), args.dim)
    if "features" in parts:
        print_features(features_table(args), args.rounds)
    if "ranking" in parts:
        ranking(ckpts, cands, targets, dims, args.dense_ranking)


if __name__ == "__main__":
    main()
