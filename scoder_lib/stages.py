"""The study's stages: where each writes, what settings it depends on, and its success marker."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .config import REPO_ROOT, Config, fingerprint, load_config
from .io import read_json, sha256_file, write_json
from .logs import get_logger, setup_logging

NOTEBOOKS = REPO_ROOT / "notebooks"
MARKER = "_SUCCESS.json"
log = get_logger(__name__)


@dataclass(frozen=True)
class StageDef:
    key: str
    title: str
    sections: tuple[str, ...]  # top-level config sections its outputs depend on
    per_iteration: bool = False
    hide_code: bool = False

    @property
    def notebook(self) -> Path:
        return NOTEBOOKS / f"{self.key}.ipynb"


# Why "seed" and "synthesizer" everywhere: the global seed and the base model reach every stage.
_COMMON = ("seed", "synthesizer")
STAGES: tuple[StageDef, ...] = (
    StageDef("01_preprocess", "Snippet pool", ("preprocess", "benchmarks", "seed")),
    StageDef("02_seed", "Seed distillation", _COMMON + ("seed_stage", "execution", "benchmarks")),
    StageDef("03_sample_score", "Sampling and scoring", _COMMON + ("iterate", "execution"), per_iteration=True),
    StageDef("04_influence", "Influence and next synthesizer", _COMMON + ("influence", "iterate"), per_iteration=True),
    StageDef("05_final", "Final synthesis and students", _COMMON + ("final", "execution", "benchmarks")),
    StageDef("06_evaluate", "Evaluation", _COMMON + ("evaluate", "execution", "benchmarks", "final")),
    StageDef("07_report", "Study report", (), hide_code=True),
)
BY_KEY = {s.key: s for s in STAGES}


def stage_def(key: str) -> StageDef:
    if key not in BY_KEY:
        raise KeyError(f"unknown stage '{key}'; stages: {', '.join(BY_KEY)}")
    return BY_KEY[key]


def outputs_root() -> Path:
    """Where runs live: outputs/ in the repository, or $SCODER_OUTPUTS (tests use a temp dir)."""
    return Path(os.environ.get("SCODER_OUTPUTS") or REPO_ROOT / "outputs").resolve()


def run_dir(run: str) -> Path:
    return outputs_root() / run


def stage_dir(run: str, key: str, iteration: int | None = None) -> Path:
    sd = stage_def(key)
    base = run_dir(run) / f"iter_{iteration}" if sd.per_iteration else run_dir(run)
    return base / key


def stage_id(key: str, iteration: int | None) -> str:
    return f"{key}@{iteration}" if stage_def(key).per_iteration else key


def run_profile(run: str) -> str:
    """The profile a run was planned with (run.json), else the run's own name."""
    meta = run_dir(run) / "run.json"
    return read_json(meta)["profile"] if meta.exists() else run


def settings_hash(cfg: Config, key: str, iteration: int | None) -> str:
    """What determines a stage's outputs: its config sections, its notebook, its iteration."""
    sd = stage_def(key)
    nb_sha = sha256_file(sd.notebook)[:16] if sd.notebook.exists() else ""
    return fingerprint({"sections": cfg.section_hash(list(sd.sections)), "notebook": nb_sha,
                        "iteration": iteration if sd.per_iteration else None})


def is_done(run: str, key: str, iteration: int | None = None) -> bool:
    return (stage_dir(run, key, iteration) / MARKER).exists()


class Stage:
    """A notebook's handle on its stage: config, folders, upstream lookups, and `finish`."""

    def __init__(self, run: str, key: str, iteration: int | None = None, cfg: Config | None = None):
        setup_logging()
        self.run, self.key, self.defn = run, key, stage_def(key)
        if self.defn.per_iteration and (iteration is None or iteration < 1):
            raise ValueError(f"stage {key} runs per iteration: pass iteration >= 1")
        self.iteration = iteration if self.defn.per_iteration else None
        self.cfg = cfg or load_config(run_profile(run))
        self.dir = stage_dir(run, key, self.iteration)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.figures = self.dir / "figures"
        self.started = time.monotonic()
        log.info("stage %s (run %s, profile %s) -> %s", stage_id(key, self.iteration), run,
                 self.cfg.profile, self.dir)

    def path(self, name: str) -> Path:
        return self.dir / name

    @property
    def cache_dir(self) -> Path:
        return self.cfg.resolve(self.cfg.cache_dir)

    def upstream(self, key: str, iteration: int | None = None) -> Path:
        """Folder of a finished upstream stage; a clear error if it has not run."""
        folder = stage_dir(self.run, key, iteration)
        if not (folder / MARKER).exists():
            what = stage_id(key, iteration)
            raise FileNotFoundError(f"stage {what} has not finished in {run_dir(self.run)}: "
                                    f"run `make reproduce RUN={self.run}` (or its notebook) first")
        return folder

    def save_figure(self, fig: Any, name: str) -> None:
        """Show a matplotlib figure in the notebook and save it as figures/<name>.png (the index links it)."""
        import matplotlib.pyplot as plt

        self.figures.mkdir(parents=True, exist_ok=True)
        fig.savefig(self.figures / f"{name}.png", dpi=110, bbox_inches="tight")
        try:
            from IPython.display import display

            display(fig)
        except ImportError:
            pass
        plt.close(fig)  # one figure per call: no duplicate rendering, no memory growth

    def finish(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Write metrics.json (flat scalars) then the success marker, last, so a crash never fakes done."""
        bad = {k: type(v).__name__ for k, v in metrics.items()
               if not isinstance(v, (int, float, str, bool)) and v is not None}
        if bad:
            raise TypeError(f"metrics must be flat scalars; not scalar: {bad}")
        wall = time.monotonic() - self.started
        # NaN/inf are not JSON: an undefined metric (a correlation over one sample) is written as null.
        clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in metrics.items()}
        write_json(self.path("metrics.json"), clean, sort_keys=False)  # the notebook's order: headline first
        marker = {
            "stage": self.key, "iteration": self.iteration, "run": self.run, "profile": self.cfg.profile,
            "settings_hash": settings_hash(self.cfg, self.key, self.iteration),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "notebook_wall_s": round(wall, 1),
        }
        write_json(self.path(MARKER), marker)
        log.info("stage %s done: %d metrics written", stage_id(self.key, self.iteration), len(metrics))
        return marker


def read_metrics(run: str, key: str, iteration: int | None = None) -> dict[str, Any]:
    path = stage_dir(run, key, iteration) / "metrics.json"
    return read_json(path) if path.exists() else {}


def stage_instances(cfg: Config) -> list[tuple[str, int | None]]:
    """Every (stage, iteration) of a profile, in execution order."""
    out: list[tuple[str, int | None]] = []
    for sd in STAGES:
        if sd.per_iteration:
            continue
        if sd.key == "05_final":
            for t in range(1, cfg.iterate.iterations + 1):
                out += [("03_sample_score", t), ("04_influence", t)]
        out.append((sd.key, None))
    return out


def dump_params(cfg: Config) -> str:
    return json.dumps(cfg.model_dump(mode="json"), indent=2, sort_keys=True)
