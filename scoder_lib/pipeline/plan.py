"""Plan a run before any work: validate params, refresh the stamps make compares, write make's rules.

    python -m scoder_lib.pipeline.plan --profile tiny --run tiny

Make calls this on every invocation, so it imports nothing heavy (no torch, papermill, nbconvert).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from scoder_lib.core import cli
from scoder_lib.core.io import write_json, write_text
from scoder_lib.core.logs import get_logger
from scoder_lib.core.run import MARKER, Run, StageRef
from scoder_lib.llm.base import require_backend

log = get_logger(__name__)


def plan(profile: str, name: str) -> int:
    """Validate params, refresh stamps whose settings hash changed, and write make's rules (plan.mk)."""
    run = Run.for_profile(profile, name)  # raises ConfigError before anything is written
    check_backends(run)
    run.stamps.mkdir(parents=True, exist_ok=True)
    if not (run.dir / "run.json").exists():
        write_json(run.dir / "run.json", {"profile": run.profile, "run": run.name})
    _write_if_changed(run.dir / "params.resolved.json", run.params_json() + "\n")
    changed = [
        ref.id for ref in run.instances if _write_if_changed(run.stamps / ref.stamp, run.settings_hash(ref) + "\n")
    ]
    _write_if_changed(run.stamps / "plan.mk", make_rules(run))
    write_text(run.stamps / "plan_started", f"{time.time()}\n")
    if changed:
        log.info("settings changed (or new) for: %s", ", ".join(changed))
    return 0


def make_rules(run: Run) -> str:
    """make's rules for every stage instance: marker <- its stamp and the marker before it.

    Paths are written through the Makefile's $(OUT) and $(STAMPS), so they match however make was
    called (relative or absolute OUTPUTS).
    """

    def marker(ref: StageRef) -> str:
        return f"$(OUT)/{run.stage_dir(ref.key, ref.iteration).relative_to(run.dir)}/{MARKER}"

    lines = ["# Written by `runner plan` from the stage table (scoder_lib/core/run.py); do not edit.", ""]
    previous = None
    for ref in run.instances:
        deps = f"$(STAMPS)/{ref.stamp}" + (f" {marker(previous)}" if previous else "")
        flag = f" --iteration {ref.iteration}" if ref.iteration else ""
        lines += [f"{marker(ref)}: {deps}", f"\t$(RUN_STAGE) --stage {ref.key}{flag}", ""]
        previous = ref
    lines.append(f"FINAL_MARKER := {marker(run.instances[-1])}")
    return "\n".join(lines) + "\n"


def check_backends(run: Run) -> None:
    """Fail before any work if a model asks for a backend whose package is missing."""
    cfg = run.cfg
    specs = [
        ("synthesizer", cfg.synthesizer),
        ("final.student", cfg.final.student),
        ("iterate.scorer", cfg.iterate.scorer),
    ]
    if cfg.seed_stage.teacher.backend == "openai":
        specs.append(("seed_stage.teacher.model", cfg.seed_stage.teacher.model))
    for where, spec in specs:
        if spec is not None:
            require_backend(spec, f"{run.profile}: {where}")


def _write_if_changed(path: Path, text: str) -> bool:
    """Rewrite only on change, so the file's mtime tells make whether the stage is stale."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    write_text(path, text)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = cli.parser("scoder_lib.pipeline.plan", __doc__)
    ap.add_argument("--profile", required=True, help="params/<profile>.yaml, or a path to a .yaml")
    ap.add_argument("--run", required=True, help="the run's folder name under outputs/")
    args = ap.parse_args(argv)
    return cli.run(lambda: plan(args.profile, args.run))


if __name__ == "__main__":
    sys.exit(main())
