"""Stages an ablation run takes from the run it ablates, instead of computing them again.

Why: an ablation must differ from the method in its one switch. The stages before the switch (the
snippet pool, the enhanced synthesizer, and for an ablation of influence also iteration 1's candidates
and scores) have the same settings in both runs. Computing them again costs hours at paper scale (the
7B enhanced synthesizer is trained once more per ablation), and on a GPU whose kernels are not
deterministic it gives a slightly different synthesizer: a second difference beside the switch. So the
ablation takes them from the method run: its stage folder holds a link to each of the method run's
files, and a marker of its own that names where they come from.

Only a leading run of stages is shared: each stage reads what the ones before it wrote, so a stage
with the same settings after one that differs is not the same stage.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from scoder_lib.core.config import ConfigError
from scoder_lib.core.io import read_json, write_json
from scoder_lib.core.logs import get_logger
from scoder_lib.core.run import MARKER, Run, StageRef, outputs_root

log = get_logger(__name__)

SHARED = "shared_from"  # the marker's key: {run, profile, stage folder}
# Stages a synthesizer comes from; the final stages (students, evaluation, report) are a run's own.
SHAREABLE = ("01_preprocess", "02_seed", "03_sample_score", "04_influence")


def same_settings(run: Run, parent: Run) -> list[StageRef]:
    """The leading stages of `run` whose settings hash equals `parent`'s: what it could share, from the
    params alone (the bill uses it before anything has run)."""
    out: list[StageRef] = []
    for ref in run.instances:
        if ref.key not in SHAREABLE or ref not in parent.instances:
            break
        if run.settings_hash(ref) != parent.settings_hash(ref):
            break
        out.append(ref)
    return out


def shareable(run: Run, parent: Run) -> list[StageRef]:
    """The leading stages of `run` that `parent` has finished with the same settings: what `share` may link.
    A stage the parent has not finished (or finished under other settings) ends the list, and so does one
    that `run` finished itself: a stage taken after one of its own would pair its own synthesizer with the
    other run's candidates."""
    if parent.dir.resolve() == run.dir.resolve():
        raise ConfigError(f"run '{run.name}' cannot share stages with itself: SHARE_FROM names another run")
    out: list[StageRef] = []
    for ref in same_settings(run, parent):
        marker = parent.marker(ref)
        if not marker.exists() or read_json(marker).get("settings_hash") != run.settings_hash(ref):
            break
        ours = read_json(run.marker(ref)) if run.marker(ref).exists() else None
        if ours is not None and ours.get(SHARED, {}).get("run") != parent.name:
            break
        out.append(ref)
    return out


def stale(run: Run) -> list[StageRef]:
    """`run`'s shared stages whose source changed since they were taken: the other run's marker is gone,
    or records other settings or another finish (the stage was computed again there). `plan` deletes
    their markers, so make takes them again or computes them, and everything after them."""
    out = []
    for ref in run.instances:
        ours = read_json(run.marker(ref)) if run.marker(ref).exists() else {}
        if SHARED not in ours:
            continue
        path = outputs_root() / ours[SHARED]["run"] / run.marker(ref).relative_to(run.dir)
        theirs = read_json(path) if path.exists() else {}
        taken = (run.settings_hash(ref), ours.get("finished_at"))
        if (theirs.get("settings_hash"), theirs.get("finished_at")) != taken:
            out.append(ref)
    return out


def is_shared(folder: Path) -> bool:
    """A stage folder made by `share` (it holds links into another run)."""
    return folder.is_dir() and any(p.is_symlink() for p in folder.iterdir())


def clear_shared(run: Run, ref: StageRef) -> None:
    """Before a stage runs itself: drop what `share` linked (the folder, the report), so that nothing it
    writes goes through a link into the other run's files. rmtree and unlink remove the links, never
    what they point to."""
    folder = run.stage_dir(ref.key, ref.iteration)
    if is_shared(folder):
        log.info("%s held another run's files (shared); removing the links before the stage runs", folder)
        shutil.rmtree(folder)
    if run.report(ref).is_symlink():
        run.report(ref).unlink()


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    # relative: the two runs stay linked when the outputs folder moves as a whole
    link.symlink_to(os.path.relpath(target, link.parent))


def share(run: Run, parent: Run, ref: StageRef) -> dict[str, Any]:
    """Make `run`'s stage `ref` the parent's: a link to each of its files and to its HTML report, and a
    marker of `run`'s own (the parent's, with `shared_from`). Refuses what `shareable` leaves out.

    Why not the executed notebook too: its parameters name the other run, so running it (or saving it,
    which follows the link) in JupyterLab would rewrite that run's stage; its report shows the same."""
    if ref not in shareable(run, parent):
        raise ConfigError(
            f"stage {ref.id} of run '{run.name}' cannot be shared with run '{parent.name}': the stages up to it "
            f"must have finished there with the same settings (rerun `make` to plan again)"
        )
    src, dst = parent.stage_dir(ref.key, ref.iteration), run.stage_dir(ref.key, ref.iteration)
    if dst.is_symlink() or dst.is_file():
        dst.unlink()
    elif dst.exists():
        shutil.rmtree(dst)  # make found it stale: the parent's stage is newer
    dst.mkdir(parents=True)
    for entry in sorted(src.iterdir()):
        if entry.name != MARKER:
            _link(entry, dst / entry.name)
    if parent.report(ref).exists():
        _link(parent.report(ref), run.report(ref))
    marker = read_json(parent.marker(ref))
    marker.update(
        run=run.name,
        profile=run.cfg.profile,
        **{SHARED: {"run": parent.name, "profile": parent.cfg.profile, "folder": str(src)}},
    )
    write_json(dst / MARKER, marker)  # last: a share interrupted before this does not count as done
    log.info("stage %s of run %s: shared from run %s (same settings): %s", ref.id, run.name, parent.name, src)
    return marker
