"""A run: its folder under outputs/, its resolved config, and the stage table that orders its stages.

The stage table (`STAGES`) is the single source of the study's order: `Run.instances()` expands it
with the profile's iteration count, the runner writes make's rules from it, and the report lists
stages from it. Nothing is written in one place and parsed back in another.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from scoder_lib.core.config import REPO_ROOT, Config, ConfigError
from scoder_lib.core.hashing import fingerprint, sha256_file
from scoder_lib.core.io import read_json
from scoder_lib.core.params import load_config

NOTEBOOKS = REPO_ROOT / "notebooks"
MARKER = "_SUCCESS.json"


@dataclass(frozen=True)
class StageDef:
    """One notebook of the study and the config sections its outputs depend on."""

    key: str
    title: str
    sections: tuple[str, ...]
    per_iteration: bool = False
    hide_code: bool = False
    runs_untrusted_code: bool = False  # its marker records the sandbox isolation it ran under

    @property
    def notebook(self) -> Path:
        return NOTEBOOKS / f"{self.key}.ipynb"


# Why "seed" and "synthesizer" everywhere: the global seed and the base model reach every stage.
_COMMON = ("seed", "synthesizer")
STAGES: tuple[StageDef, ...] = (
    StageDef("01_preprocess", "Snippet pool", ("preprocess", "benchmarks", "seed")),
    StageDef(
        "02_seed", "Seed distillation", _COMMON + ("seed_stage", "execution", "benchmarks"), runs_untrusted_code=True
    ),
    StageDef(
        "03_sample_score",
        "Sampling and scoring",
        _COMMON + ("iterate", "execution"),
        per_iteration=True,
        runs_untrusted_code=True,
    ),
    StageDef(
        "04_influence",
        "Influence and next synthesizer",
        _COMMON + ("influence", "iterate", "execution"),
        per_iteration=True,
        runs_untrusted_code=True,
    ),
    StageDef(
        "05_final",
        "Final synthesis and students",
        _COMMON + ("final", "execution", "benchmarks"),
        runs_untrusted_code=True,
    ),
    StageDef(
        "06_evaluate",
        "Evaluation",
        _COMMON + ("evaluate", "execution", "benchmarks", "final"),
        runs_untrusted_code=True,
    ),
    StageDef("07_report", "Study report", (), hide_code=True),
)
BY_KEY = {s.key: s for s in STAGES}
# Read by any stage, hashed by none: they name and describe the run, or say where caches live.
UNHASHED = frozenset({"profile", "description", "inherit", "cache_dir"})


def readable_sections(key: str) -> frozenset[str]:
    """The config sections a stage may read: its own and every earlier stage's.

    Why earlier ones too: a change there reruns the earlier stage, and make's chain of markers then
    reruns this one; an ablation whose earlier section differs computes that stage, and takes nothing
    after it. A later stage's section is not covered: a change to it would neither rerun this stage nor
    stop an ablation from taking it."""
    sd = stage_def(key)
    if not sd.sections:  # the report: it reads every stage's outputs, whatever their settings
        return frozenset(Config.model_fields)
    out = set(UNHASHED)
    for earlier in STAGES[: STAGES.index(sd) + 1]:
        out |= set(earlier.sections)
    return frozenset(out)


def stage_def(key: str) -> StageDef:
    if key not in BY_KEY:
        raise KeyError(f"unknown stage '{key}'; stages: {', '.join(BY_KEY)}")
    return BY_KEY[key]


@dataclass(frozen=True)
class StageRef:
    """One stage instance of a run: a stage, with its iteration when it runs per iteration."""

    key: str
    iteration: int | None = None

    def __post_init__(self) -> None:
        per_iteration = stage_def(self.key).per_iteration
        if per_iteration and (self.iteration is None or self.iteration < 1):
            raise ValueError(f"stage {self.key} runs per iteration: pass iteration >= 1")
        if not per_iteration and self.iteration is not None:
            object.__setattr__(self, "iteration", None)  # notebooks pass iteration=0 to every stage

    @property
    def defn(self) -> StageDef:
        return stage_def(self.key)

    @property
    def id(self) -> str:
        """How logs and reports name it: `03_sample_score@2`."""
        return f"{self.key}@{self.iteration}" if self.iteration else self.key

    @property
    def name(self) -> str:
        """File stem of its executed notebook and HTML report: `03_sample_score_iter2`."""
        return f"{self.key}_iter{self.iteration}" if self.iteration else self.key

    @property
    def stamp(self) -> str:
        return f"{self.key}.iter{self.iteration}.hash" if self.iteration else f"{self.key}.hash"


def outputs_root() -> Path:
    """Where runs live: outputs/ in the repository, or $SCODER_OUTPUTS (tests use a temp dir)."""
    return Path(os.environ.get("SCODER_OUTPUTS") or REPO_ROOT / "outputs").resolve()


@dataclass(frozen=True)
class Run:
    """A named run of a profile: every path of its folder and its stage instances in order."""

    name: str
    profile: str  # a profile name, or the absolute path of a params file outside params/
    cfg: Config = field(compare=False, repr=False)

    @classmethod
    def open(cls, name: str, cfg: Config | None = None) -> Run:
        """An existing (planned) run; its profile comes from run.json, else the run's own name."""
        meta = outputs_root() / name / "run.json"
        profile = read_json(meta)["profile"] if meta.exists() else name
        return cls(name, profile, cfg or load_config(profile))

    @classmethod
    def for_profile(cls, profile: str, name: str) -> Run:
        """A run of `profile` named `name`; refuses a folder made with another profile."""
        cfg = load_config(profile)
        if profile.endswith((".yaml", ".yml")):
            profile = str(Path(profile).resolve())  # a params file outside params/ (tests, experiments)
        meta = outputs_root() / name / "run.json"
        if meta.exists() and read_json(meta)["profile"] != profile:
            raise ConfigError(
                f"{meta.parent} was made with profile '{read_json(meta)['profile']}', "
                f"not '{profile}': pick another RUN= or delete {meta.parent}"
            )
        return cls(name, profile, cfg)

    # ------------------------------------------------------------------ folders
    @property
    def dir(self) -> Path:
        return outputs_root() / self.name

    @property
    def stamps(self) -> Path:
        return self.dir / ".stamps"

    @property
    def reports(self) -> Path:
        return self.dir / "reports"

    @property
    def cache_dir(self) -> Path:
        return self.cfg.resolve(self.cfg.cache_dir)

    def stage_dir(self, key: str, iteration: int | None = None) -> Path:
        ref = StageRef(key, iteration)
        return (self.dir / f"iter_{ref.iteration}" if ref.iteration else self.dir) / key

    def executed_notebook(self, ref: StageRef) -> Path:
        return self.dir / "notebooks" / f"{ref.name}.ipynb"

    def report(self, ref: StageRef) -> Path:
        return self.reports / f"{ref.name}.html"

    # ------------------------------------------------------------------ stages
    @cached_property
    def instances(self) -> tuple[StageRef, ...]:
        """Every stage instance of this run in execution order (iteration stages expanded)."""
        out: list[StageRef] = []
        for sd in STAGES:
            if sd.per_iteration:
                continue
            if sd.key == "05_final":  # the iterations run between the seed stage and the final one
                for t in range(1, self.cfg.iterate.iterations + 1):
                    out += [StageRef(s.key, t) for s in STAGES if s.per_iteration]
            out.append(StageRef(sd.key))
        return tuple(out)

    def marker(self, ref: StageRef) -> Path:
        return self.stage_dir(ref.key, ref.iteration) / MARKER

    def is_done(self, key: str, iteration: int | None = None) -> bool:
        return self.marker(StageRef(key, iteration)).exists()

    def metrics(self, key: str, iteration: int | None = None) -> dict[str, Any]:
        """A finished or failed stage's metrics.json ({} if it has none)."""
        path = self.stage_dir(key, iteration) / "metrics.json"
        return read_json(path) if path.exists() else {}

    def wall_s(self, ref: StageRef) -> float | None:
        """Wall-clock seconds of a finished stage (as the runner measured it), else None."""
        if not self.marker(ref).exists():
            return None
        m = read_json(self.marker(ref))
        return float(m.get("runner_wall_s", m.get("notebook_wall_s", 0.0)))

    def upstream(self, key: str, iteration: int | None = None) -> Path:
        """Folder of a finished stage of this run; a clear error if it has not run."""
        ref = StageRef(key, iteration)
        if not self.marker(ref).exists():
            raise FileNotFoundError(
                f"stage {ref.id} has not finished in {self.dir}: "
                f"run `make reproduce RUN={self.name}` (or its notebook) first"
            )
        return self.stage_dir(key, iteration)

    def settings_hash(self, ref: StageRef) -> str:
        """What determines a stage's outputs: its config sections, its notebook, its iteration."""
        nb = ref.defn.notebook
        nb_sha = sha256_file(nb)[:16] if nb.exists() else ""
        return fingerprint(
            {"sections": self.cfg.section_hash(list(ref.defn.sections)), "notebook": nb_sha, "iteration": ref.iteration}
        )

    def params_json(self) -> str:
        return json.dumps(self.cfg.model_dump(mode="json"), indent=2, sort_keys=True)
