"""The Makefile's entry point: plan a run, execute one stage's notebook (the one papermill call), render reports.

    python -m scoder_lib.runner plan  --profile tiny --run tiny
    python -m scoder_lib.runner stage --run tiny --stage 03_sample_score --iteration 1
    python -m scoder_lib.runner report --run tiny
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

from .config import REPO_ROOT, Config, ConfigError, load_config
from .io import read_json, write_json, write_text
from .logs import get_logger, setup_logging
from .stages import (MARKER, STAGES, run_dir, run_profile, settings_hash, stage_def, stage_dir,
                     stage_id, stage_instances, dump_params)

log = get_logger(__name__)


def _stamp_name(key: str, iteration: int | None) -> str:
    return f"{key}.iter{iteration}.hash" if iteration is not None else f"{key}.hash"


def plan(profile: str, run: str) -> int:
    """Validate params, then refresh stamp files whose settings hash changed (make's real targets)."""
    cfg = load_config(profile)  # raises ConfigError before anything is written
    check_backends(cfg)
    if profile.endswith((".yaml", ".yml")):
        profile = str(Path(profile).resolve())  # a params file outside params/ (tests, experiments)
    out = run_dir(run)
    meta = out / "run.json"
    if meta.exists() and read_json(meta)["profile"] != profile:
        raise ConfigError(f"{out} was made with profile '{read_json(meta)['profile']}', "
                          f"not '{profile}': pick another RUN= or delete {out}")
    stamps = out / ".stamps"
    stamps.mkdir(parents=True, exist_ok=True)
    if not meta.exists():
        write_json(meta, {"profile": profile, "run": run})
    _write_if_changed(out / "params.resolved.json", dump_params(cfg) + "\n")
    changed = []
    for key, it in stage_instances(cfg):
        if _write_if_changed(stamps / _stamp_name(key, it), settings_hash(cfg, key, it) + "\n"):
            changed.append(stage_id(key, it))
    _write_if_changed(stamps / "plan.mk", f"ITERATIONS := {cfg.iterate.iterations}\n")
    write_text(stamps / "plan_started", f"{time.time()}\n")
    if changed:
        log.info("settings changed (or new) for: %s", ", ".join(changed))
    return 0


def check_backends(cfg: Config) -> None:
    """Fail before any work if a model asks for a backend whose package is missing."""
    specs = [("synthesizer", cfg.synthesizer), ("final.student", cfg.final.student),
             ("iterate.scorer", cfg.iterate.scorer), ("seed_stage.teacher.model", cfg.seed_stage.teacher.model)]
    for where, spec in specs:
        if spec is None or (where.startswith("seed_stage") and cfg.seed_stage.teacher.backend != "openai"):
            continue
        if spec.backend == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ConfigError(f"{where}: backend 'vllm' needs vLLM, which is not installed in {sys.prefix}: "
                              "on GPUs `pip install vllm` into this venv; on CPUs set backend: "
                              "transformers (vLLM's CPU build is exercised by `make test-vllm`)")


def _write_if_changed(path: Path, text: str) -> bool:
    """Rewrite only on change, so the file's mtime tells make whether the stage is stale."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    write_text(path, text)
    return True


def run_stage(run: str, key: str, iteration: int | None) -> int:
    """Execute one stage notebook with papermill into outputs/<run>/notebooks, then render HTML."""
    import papermill as pm

    sd = stage_def(key)
    cfg = load_config(run_profile(run))
    folder = stage_dir(run, key, iteration)
    marker = folder / MARKER
    marker.unlink(missing_ok=True)  # a stage that fails or is interrupted must not count as done
    name = f"{key}_iter{iteration}" if sd.per_iteration else key
    executed = run_dir(run) / "notebooks" / f"{name}.ipynb"
    executed.parent.mkdir(parents=True, exist_ok=True)
    log.info("running notebooks/%s -> %s", sd.notebook.name, executed)
    params = {"run": run, "iteration": iteration if iteration is not None else 0}
    start = time.monotonic()
    failed: BaseException | None = None
    try:
        pm.execute_notebook(str(sd.notebook), str(executed), parameters=params, kernel_name="python3",
                            cwd=str(REPO_ROOT), log_output=True, progress_bar=False,
                            report_mode=False, request_save_on_cell_execute=True)
    except (Exception, KeyboardInterrupt) as exc:  # keep the executed notebook as the log, then stop
        failed = exc
    wall = time.monotonic() - start
    from .report import render_html, write_index

    render_html(executed, run_dir(run) / "reports" / f"{name}.html", hide_code=sd.hide_code)
    if failed is None and not marker.exists():
        failed = RuntimeError(f"{sd.notebook.name} finished without writing {MARKER}")
    if failed is None and read_json(marker)["settings_hash"] != settings_hash(cfg, key, iteration):
        failed = RuntimeError("params changed while the stage ran; rerun make")
    if failed is not None:
        marker.unlink(missing_ok=True)
        write_index(run)
        log.error("stage %s FAILED after %.0fs: %s\n  executed notebook (the log): %s",
                  stage_id(key, iteration), wall, str(failed).strip().splitlines()[-1] if str(failed).strip() else type(failed).__name__,
                  executed)
        return 130 if isinstance(failed, KeyboardInterrupt) else 1
    done = read_json(marker)
    done["runner_wall_s"] = round(wall, 1)
    write_json(marker, done)
    write_index(run)
    log.info("stage %s done in %.0fs", stage_id(key, iteration), wall)
    return 0


def summary(run: str) -> int:
    """One line per stage: ran now or already up to date."""
    cfg = load_config(run_profile(run))
    started = float((run_dir(run) / ".stamps" / "plan_started").read_text())
    ran, fresh = [], []
    for key, it in stage_instances(cfg):
        marker = stage_dir(run, key, it) / MARKER
        (ran if marker.stat().st_mtime >= started else fresh).append(stage_id(key, it))
    if not ran:
        print(f"Nothing to do: all {len(fresh)} stages of {run_dir(run)} are up to date "
              f"(report: {run_dir(run)}/reports/index.html)")
    else:
        print(f"Ran {len(ran)} stage(s): {', '.join(ran)}; up to date: {', '.join(fresh) or 'none'}.\n"
              f"Report: {run_dir(run)}/reports/index.html")
    return 0


def report(run: str) -> int:
    """Re-render every executed notebook to HTML and rebuild the index."""
    from .report import render_html, write_index

    for nb in sorted((run_dir(run) / "notebooks").glob("*.ipynb")):
        key = nb.stem.split("_iter")[0]
        render_html(nb, run_dir(run) / "reports" / f"{nb.stem}.html", hide_code=stage_def(key).hide_code)
    write_index(run)
    print(run_dir(run) / "reports" / "index.html")
    return 0


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    ap = argparse.ArgumentParser(prog="python -m scoder_lib.runner", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan", help="validate params and refresh stage stamps")
    p.add_argument("--profile", required=True)
    p.add_argument("--run", required=True)
    s = sub.add_parser("stage", help="execute one stage notebook")
    s.add_argument("--run", required=True)
    s.add_argument("--stage", required=True, choices=[sd.key for sd in STAGES])
    s.add_argument("--iteration", type=int, default=None)
    for name in ("report", "summary"):
        sub.add_parser(name).add_argument("--run", required=True)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "plan":
            return plan(args.profile, args.run)
        if args.cmd == "stage":
            return run_stage(args.run, args.stage, args.iteration)
        if args.cmd == "summary":
            return summary(args.run)
        return report(args.run)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
