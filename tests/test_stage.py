"""A stage reads only the config sections its settings hash covers (`Stage` records them): what is
allowed, what is flagged in the marker. The real notebooks are checked end to end in test_e2e."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from scoder_lib.core.config import Config
from scoder_lib.core.io import read_json
from scoder_lib.core.run import MARKER, STAGES, UNHASHED, Run, readable_sections
from scoder_lib.pipeline.stage import Stage


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    monkeypatch.setenv("SCODER_OUTPUTS", str(tmp_path / "outputs"))
    return Run.for_profile("smoke", "audit")


def _stage(run: Run, monkeypatch: pytest.MonkeyPatch, key: str, iteration: int | None = None) -> Stage:
    st = Stage(run, key, iteration)
    monkeypatch.setattr(logging.getLogger("scoder"), "propagate", True)  # Stage's logging set-up; caplog sees it
    return st


def test_a_stage_may_read_its_own_and_earlier_stages_sections_only():
    assert readable_sections("01_preprocess") == {"preprocess", "benchmarks", "seed"} | UNHASHED
    iterate = readable_sections("03_sample_score")
    assert {"seed_stage", "iterate", "execution", "synthesizer"} <= iterate  # 02's and its own
    assert not {"influence", "final", "evaluate"} & iterate  # 04's, 05's and 06's
    assert "influence" in readable_sections("04_influence") and "evaluate" not in readable_sections("05_final")
    assert readable_sections("07_report") == set(Config.model_fields)  # the report reads every stage's outputs
    # every section of the config is some stage's: nothing is read that no hash covers
    assert set(Config.model_fields) - UNHASHED == set().union(*(s.sections for s in STAGES))


def test_reading_a_later_stages_section_is_flagged_in_the_marker(run, caplog, monkeypatch):
    st = _stage(run, monkeypatch, "02_seed")
    _ = st.cfg.seed_stage.train, st.run.cfg.benchmarks.folder, st.cfg.preprocess  # its own, and 01's
    _ = st.cfg.iterate.sampling.max_new_tokens, st.run.cfg.evaluate  # 03's and 06's: not in 02's hash
    with caplog.at_level(logging.WARNING, logger="scoder.pipeline.stage"):
        st.finish({"n": 1})
    assert read_json(st.path(MARKER))["config_reads_outside_hash"] == ["evaluate", "iterate"]
    assert "read config sections outside its settings hash: evaluate, iterate" in caplog.text


def test_a_stage_reading_within_its_hash_writes_a_clean_marker(run, caplog, monkeypatch):
    st = _stage(run, monkeypatch, "04_influence", 1)
    _ = st.cfg.influence.select, st.cfg.iterate, st.cfg.seed_stage, st.cfg.cache_dir, st.cfg.profile
    with caplog.at_level(logging.WARNING, logger="scoder.pipeline.stage"):
        st.finish({"n": 1})
    assert "config_reads_outside_hash" not in read_json(st.path(MARKER))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # recording stopped with `finish`: the marker's own reads (engines, isolation) are not the stage's
    _ = st.cfg.evaluate
    assert Stage(run, "01_preprocess").reads_outside_hash() == []
