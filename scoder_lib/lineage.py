"""Which synthesizer each stage trained, which one the next starts from, and which snippets were used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .io import read_json, read_jsonl, write_json
from .stages import stage_dir
from .train import TrainResult

SYNTH = "synthesizer.json"
USED = "snippets_used.jsonl"


def save_synthesizer(folder: Path, result: TrainResult, note: str) -> dict[str, Any]:
    """Record a trained synthesizer: its M checkpoints (oldest first) and the final one."""
    meta = {"checkpoints": [str(p) for p in result.checkpoints], "final": str(result.final),
            "steps": result.steps, "note": note}
    write_json(folder / SYNTH, meta)
    return meta


def synthesizer_before(run: str, iteration: int) -> dict[str, Any]:
    """The synthesizer iteration t starts from: 02's enhanced one for t=1, else iteration t-1's."""
    folder = stage_dir(run, "02_seed") if iteration <= 1 else stage_dir(run, "04_influence", iteration - 1)
    return read_json(folder / SYNTH)


def snippets_used_before(run: str, iteration: int) -> set[str]:
    """Snippet keys consumed by iterations 1..t-1 (each iteration draws fresh ones)."""
    keys: set[str] = set()
    for t in range(1, iteration):
        path = stage_dir(run, "03_sample_score", t) / USED
        keys |= {r["key"] for r in read_jsonl(path)}
    return keys


def final_synthesizer(run: str) -> dict[str, Any]:
    """The synthesizer a run ends with (after its last iteration); used by ablation arms."""
    from .config import load_config
    from .stages import run_profile

    return synthesizer_before(run, load_config(run_profile(run)).iterate.iterations + 1)
