"""Which top-level config sections a stage reads: `Stage` records them between its start and `finish`,
and flags any that its settings hash does not cover (`core.run.readable_sections`)."""

from __future__ import annotations

from typing import Any

RECORDING: dict[int, set[str]] = {}  # id of a config object being recorded -> the fields read from it


def note(cfg: Any, name: str) -> None:
    """Called by `Config.__getattribute__` while anything is recorded (attribute names, methods too)."""
    seen = RECORDING.get(id(cfg))
    if seen is not None and name in type(cfg).model_fields:
        seen.add(name)


def record_reads(cfg: Any) -> None:
    """Start noting which top-level sections are read from this config object (not from its copies)."""
    RECORDING[id(cfg)] = set()


def recorded_reads(cfg: Any) -> set[str]:
    """Stop recording; the sections read since `record_reads` (empty if it was not recording)."""
    return RECORDING.pop(id(cfg), set())
