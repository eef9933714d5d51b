"""What an arm asks for, in words and in samples: read by stage 05 and by the plan (which loads no model).

Apart from `method.arms` because that module imports torch, and `make plan` must stay light.
"""

from __future__ import annotations

from pathlib import Path

from scoder_lib.core.config import ArmOptions
from scoder_lib.core.run import Run


def describe(run: Run, arm: ArmOptions) -> str:
    """Where an arm's data comes from, in words (the report's and the plan's arm tables)."""
    cfg = run.cfg
    if arm.data == "teacher":
        t = cfg.seed_stage.teacher
        parts = [f"teacher seed set ({Path(t.seed_file).name}, training split)"]
        if t.backend == "openai" and t.n_new:
            parts.append(f"up to {t.n_new} samples bought from {t.model.name}")
        if t.dataset is not None:
            parts.append(f"teacher dataset {t.dataset.path or t.dataset.dataset}")
        return " + ".join(parts)
    if arm.data == "base":
        return f"base synthesizer {cfg.synthesizer.name}"
    if arm.data == "enhanced":
        return "enhanced synthesizer (02)"
    if arm.data == "method":
        return f"final synthesizer of this run (after {cfg.iterate.iterations} iterations)"
    return f"final synthesizer of run '{arm.run}' (profile {arm.profile})"


def asked_size(run: Run, arm: ArmOptions) -> int | None:
    """Samples the arm asks for: its own `n`, else `final.n_train` (None: all it has)."""
    return arm.n if arm.n is not None else run.cfg.final.n_train
