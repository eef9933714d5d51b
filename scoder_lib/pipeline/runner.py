"""The Makefile's entry point for work: execute one stage's notebook (the one papermill call), render reports.

    python -m scoder_lib.pipeline.runner stage --run tiny --stage 03_sample_score --iteration 1
    python -m scoder_lib.pipeline.runner stage --run paper-m1 --stage 02_seed --share-from paper
    python -m scoder_lib.pipeline.runner report --run tiny
    python -m scoder_lib.pipeline.runner summary --run tiny

Planning (params check, stamps, make's rules) is `scoder_lib.pipeline.plan`, kept free of
papermill and nbconvert so that it stays fast: make calls it on every invocation.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import papermill as pm

from scoder_lib.core import cli
from scoder_lib.core.config import REPO_ROOT
from scoder_lib.core.io import read_json, write_json
from scoder_lib.core.logs import get_logger
from scoder_lib.core.run import MARKER, STAGES, Run, StageRef
from scoder_lib.pipeline import share
from scoder_lib.pipeline.reports import render_html, write_index

log = get_logger(__name__)


def run_stage(name: str, key: str, iteration: int | None, share_from: str | None = None) -> int:
    """Execute one stage notebook with papermill into outputs/<run>/notebooks, then render HTML; with
    `share_from`, link the other run's finished stage instead (`share`: same settings, same files)."""
    run, ref = Run.open(name), StageRef(key, iteration)
    marker = run.marker(ref)
    marker.unlink(missing_ok=True)  # a stage that fails or is interrupted must not count as done
    if share_from:
        share.share(run, Run.open(share_from), ref)
        write_index(run)
        return 0
    executed = run.executed_notebook(ref)
    executed.parent.mkdir(parents=True, exist_ok=True)
    log.info("running notebooks/%s -> %s", ref.defn.notebook.name, executed)
    start = time.monotonic()
    failed = _execute(ref, executed, {"run": run.name, "iteration": ref.iteration or 0})
    wall = time.monotonic() - start
    render_html(executed, run.report(ref), hide_code=ref.defn.hide_code)
    if failed is None and not marker.exists():
        failed = RuntimeError(f"{ref.defn.notebook.name} finished without writing {MARKER}")
    if failed is None and read_json(marker)["settings_hash"] != run.settings_hash(ref):
        failed = RuntimeError("params changed while the stage ran; rerun make")
    if failed is not None:
        marker.unlink(missing_ok=True)
        write_index(run)
        lines = str(failed).strip().splitlines()
        log.error(
            "stage %s FAILED after %.0fs: %s\n  executed notebook (the log): %s",
            ref.id,
            wall,
            lines[-1] if lines else type(failed).__name__,
            executed,
        )
        return 130 if isinstance(failed, KeyboardInterrupt) else 1
    done = read_json(marker)
    done["runner_wall_s"] = round(wall, 1)
    write_json(marker, done)
    write_index(run)
    log.info("stage %s done in %.0fs", ref.id, wall)
    return 0


def _execute(ref: StageRef, executed: Path, params: dict[str, object]) -> BaseException | None:
    """The one papermill invocation; returns the failure (the executed notebook is kept as the log)."""
    try:
        pm.execute_notebook(
            str(ref.defn.notebook),
            str(executed),
            parameters=params,
            kernel_name="python3",
            cwd=str(REPO_ROOT),
            log_output=True,
            progress_bar=False,
            report_mode=False,
            request_save_on_cell_execute=True,
        )
    except (Exception, KeyboardInterrupt) as exc:
        return exc
    return None


def summary(name: str) -> int:
    """One line per stage: ran now or already up to date."""
    run = Run.open(name)
    started = float((run.stamps / "plan_started").read_text())
    ran, fresh = [], []
    for ref in run.instances:
        (ran if run.marker(ref).stat().st_mtime >= started else fresh).append(ref.id)
    if not ran:
        print(f"Nothing to do: all {len(fresh)} stages of {run.dir} are up to date (report: {run.reports}/index.html)")
    else:
        print(
            f"Ran {len(ran)} stage(s): {', '.join(ran)}; up to date: {', '.join(fresh) or 'none'}.\n"
            f"Report: {run.reports}/index.html"
        )
    return 0


def report(name: str) -> int:
    """Re-render every executed notebook of the run to HTML and rebuild the index."""
    run = Run.open(name)
    for ref in run.instances:
        if run.executed_notebook(ref).exists():
            render_html(run.executed_notebook(ref), run.report(ref), hide_code=ref.defn.hide_code)
    print(write_index(run))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = cli.parser("scoder_lib.pipeline.runner", __doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stage", help="execute one stage notebook")
    s.add_argument("--run", required=True)
    s.add_argument("--stage", required=True, choices=[sd.key for sd in STAGES])
    s.add_argument("--iteration", type=int, default=None)
    s.add_argument("--share-from", default=None, help="link this run's finished stage (the same settings)")
    for name in ("report", "summary"):
        sub.add_parser(name).add_argument("--run", required=True)
    args = ap.parse_args(argv)
    commands = {
        "stage": lambda: run_stage(args.run, args.stage, args.iteration, args.share_from),
        "summary": lambda: summary(args.run),
        "report": lambda: report(args.run),
    }
    return cli.run(commands[args.cmd])


if __name__ == "__main__":
    sys.exit(main())
