"""The base of every config section, and the one error a params problem raises."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A params problem, phrased as one line: file, key, what is allowed."""


class Section(BaseModel):
    # Why strict + forbid: a typo in a YAML key must fail loudly, never fall back to a default.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
