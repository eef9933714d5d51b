"""Benchmark: training with logits at response positions only vs at every position, side by side.

    .venv/bin/python scripts/bench_training.py [--profile tiny] [--steps 6] [--rounds 2]

The workload is stage 02's: the profile's synthesizer, `seed_stage.train` (tiny: LoRA r 32 on the last
8 layers, batch 4, max_seq_len 768), steps x batch_size training samples of the teacher seed set drawn
at random (seeded, so their lengths are the set's), rendered with the profile's prompt version. Each
round trains those steps twice through `sft`, once as the pipeline does (`response_logits_only`) and
once with every position's logits (the plain forward), alternating which goes first; seconds per step
(wall and CPU, set-up included) and the loss curves are printed. The two must train the same: the
script fails if their losses differ by more than 1e-4 relative.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time
from pathlib import Path


def _run(examples: list, base, opts, trim: bool) -> dict:
    from scoder_lib.method import train  # noqa: PLC0415

    keep = train.keeps_logits_by_mask
    if not trim:
        train.keeps_logits_by_mask = lambda model: False
    try:
        with tempfile.TemporaryDirectory(prefix="bench-train-") as out:
            cpu0, start = time.process_time(), time.perf_counter()
            result = train.sft(examples, base.path, Path(out), opts, base.fingerprint)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    finally:
        train.keeps_logits_by_mask = keep
    return {"trim": trim, "steps": result.steps, "wall_s": wall, "cpu_s": cpu, "losses": [x for _, x in result.losses]}


def main() -> None:
    import scoder_lib  # noqa: F401, PLC0415  (OMP_WAIT_POLICY before torch)
    from scoder_lib.core.logs import setup_logging  # noqa: PLC0415
    from scoder_lib.core.params import load_config  # noqa: PLC0415
    from scoder_lib.llm.models import prepare  # noqa: PLC0415
    from scoder_lib.method import seed  # noqa: PLC0415

    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    setup_logging()
    cfg = load_config(args.profile)
    opts = cfg.seed_stage.train.model_copy(update={"epochs": 1, "num_checkpoints": 1})
    rows = random.Random(0).sample(
        seed.load(cfg.resolve(cfg.seed_stage.teacher.seed_file)).train, args.steps * opts.batch_size
    )
    examples = [seed.to_example(r, cfg.seed_stage.prompt_version) for r in rows]
    base = prepare(cfg.synthesizer, cfg.resolve(cfg.cache_dir))
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()}; {cfg.synthesizer.name}, "
        f"{len(examples)} samples, batch {opts.batch_size}, max_seq_len {opts.max_seq_len}, LoRA r {opts.lora.r} "
        f"on the last {opts.lora.last_layers} layers",
        flush=True,
    )
    runs = []
    for r in range(args.rounds):
        for trim in (True, False) if r % 2 == 0 else (False, True):
            runs.append(_run(examples, base, opts, trim))
            x = runs[-1]
            print(
                f"round {r + 1}, {'response-only' if trim else 'every position'}: "
                f"{x['wall_s'] / x['steps']:.2f} s/step wall, {x['cpu_s'] / x['steps']:.2f} CPU-s/step",
                flush=True,
            )
    _report(runs)


def _report(runs: list[dict]) -> None:
    import numpy as np  # noqa: PLC0415

    best = {t: min((x for x in runs if x["trim"] == t), key=lambda x: x["wall_s"]) for t in (True, False)}
    a, b = np.array(best[True]["losses"]), np.array(best[False]["losses"])
    gap = float(np.max(np.abs(a - b) / np.abs(b)))
    print("\n| logits at | steps | s/step (wall, best round) | CPU-s/step | vs every position |")
    print("|---|---:|---:|---:|---:|")
    for t, label in ((False, "every position"), (True, "response positions only")):
        x = best[t]
        wall, cpu, ratio = x["wall_s"] / x["steps"], x["cpu_s"] / x["steps"], best[False]["wall_s"] / x["wall_s"]
        print(f"| {label} | {x['steps']} | {wall:.2f} | {cpu:.2f} | {ratio:.2f}x |")
    print(f"losses per step, largest relative gap: {gap:.1e}")
    if gap > 1e-4:
        raise SystemExit(f"the two ways trained differently (loss gap {gap:.1e}): not the same training")


if __name__ == "__main__":
    main()
