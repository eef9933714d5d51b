"""A notebook's handle on its stage: the run, its config, its folder, upstream lookups, and `finish`."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from IPython.display import display
from matplotlib.figure import Figure

from scoder_lib.core.config import Config
from scoder_lib.core.io import write_json
from scoder_lib.core.logs import get_logger, setup_logging
from scoder_lib.core.reads import record_reads, recorded_reads
from scoder_lib.core.run import MARKER, Run, StageRef, readable_sections
from scoder_lib.pipeline.engines import stage_engines
from scoder_lib.pipeline.share import clear_shared
from scoder_lib.sandbox.isolation import isolation_in_force, summary

log = get_logger(__name__)


class Stage:
    """What a stage notebook holds: `st = Stage(run, "03_sample_score", iteration)`."""

    def __init__(self, run: str | Run, key: str, iteration: int | None = None, cfg: Config | None = None):
        setup_logging()
        self.run = run if isinstance(run, Run) else Run.open(run, cfg)
        self.ref = StageRef(key, iteration)
        self.key, self.iteration = key, self.ref.iteration
        self.cfg = self.run.cfg
        self.dir = self.run.stage_dir(key, self.iteration)
        clear_shared(self.run, self.ref)  # a stage taken from another run, now computed here (JupyterLab too)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.figures = self.dir / "figures"
        self.started = time.monotonic()
        log.info("stage %s (run %s, profile %s) -> %s", self.ref.id, self.run.name, self.cfg.profile, self.dir)
        record_reads(self.cfg)  # from here to `finish`: the stage's own work

    def path(self, name: str) -> Path:
        return self.dir / name

    @property
    def cache_dir(self) -> Path:
        return self.run.cache_dir

    def upstream(self, key: str, iteration: int | None = None) -> Path:
        """Folder of a finished upstream stage; a clear error if it has not run."""
        return self.run.upstream(key, iteration)

    def save_figure(self, fig: Figure, name: str) -> None:
        """Show a matplotlib figure in the notebook and save it as figures/<name>.png (the index links it)."""
        self.figures.mkdir(parents=True, exist_ok=True)
        fig.savefig(self.figures / f"{name}.png", dpi=110, bbox_inches="tight")
        display(fig)
        plt.close(fig)  # one figure per call: no duplicate rendering, no memory growth

    def reads_outside_hash(self) -> list[str]:
        """Stop recording; the config sections this stage read that its settings hash does not cover
        (nor an earlier stage's), logged as a warning: a change to them would neither rerun this stage
        nor stop an ablation run from taking it."""
        outside = sorted(recorded_reads(self.cfg) - readable_sections(self.key))
        if outside:
            log.warning(
                "stage %s read config sections outside its settings hash: %s (a change to them would not rerun "
                "it): add them to its sections in core.run.STAGES, or read them in the stage they belong to",
                self.ref.id,
                ", ".join(outside),
            )
        return outside

    def finish(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Write metrics.json (flat scalars) then the success marker, last, so a crash never fakes done."""
        bad = {
            k: type(v).__name__
            for k, v in metrics.items()
            if not isinstance(v, (int, float, str, bool)) and v is not None
        }
        if bad:
            raise TypeError(f"metrics must be flat scalars; not scalar: {bad}")
        wall = time.monotonic() - self.started
        outside = self.reads_outside_hash()
        # NaN/inf are not JSON: an undefined metric (a correlation over one sample) is written as null.
        clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in metrics.items()}
        write_json(self.path("metrics.json"), clean, sort_keys=False)  # the notebook's order: headline first
        marker = {
            "stage": self.key,
            "iteration": self.iteration,
            "run": self.run.name,
            "profile": self.cfg.profile,
            "settings_hash": self.run.settings_hash(self.ref),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "notebook_wall_s": round(wall, 1),
        }
        if outside:
            marker["config_reads_outside_hash"] = outside
        engines = stage_engines(self.cfg, self.key)
        if engines:  # which backend and launcher ran this stage's models and training
            marker["engines"] = engines
        if self.ref.defn.runs_untrusted_code:
            marker["isolation"] = summary(isolation_in_force(self.cfg.execution.isolation))
        write_json(self.path(MARKER), marker)
        log.info("stage %s done: %d metrics written", self.ref.id, len(metrics))
        return marker
