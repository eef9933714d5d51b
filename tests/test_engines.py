"""What ran each stage (backend, worker interpreter, launcher): recorded in the marker, shown on the index."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from scoder_lib.core.io import read_json, write_json
from scoder_lib.core.params import load_config
from scoder_lib.core.run import MARKER, Run
from scoder_lib.pipeline import study
from scoder_lib.pipeline.engines import stage_engines
from scoder_lib.pipeline.reports import write_index


def test_rehearsal_stages_name_their_backends_and_launchers() -> None:
    cfg = load_config("paper-rehearsal")
    launcher = "under `accelerate launch --num_processes 2 --cpu`"
    vllm = "vllm smollm2-135m-instruct (worker .venv-vllm/bin/python; LoRA checkpoints as adapters of one engine)"
    seed = stage_engines(cfg, "02_seed")
    assert seed["teacher"] == "openai replay-teacher (at http://127.0.0.1:8011/v1), 4 new samples bought"
    assert seed["synthesizer"] == vllm
    assert seed["training"] == f"lora {launcher}"
    assert stage_engines(cfg, "03_sample_score")["scorer"] == "transformers smollm2-135m-instruct (in-process)"
    assert stage_engines(cfg, "04_influence")["training"] == f"lora {launcher}"
    final = stage_engines(cfg, "05_final")
    assert final["students"] == f"full {launcher}"
    assert final["teacher dataset"] == "data/seed/seed_compact_v2.jsonl"
    # full-fine-tuned students: no LoRA to serve, so no word on adapters
    assert stage_engines(cfg, "06_evaluate")["students"] == "vllm smollm2-135m-instruct (worker .venv-vllm/bin/python)"
    assert stage_engines(cfg, "01_preprocess") == {} == stage_engines(cfg, "07_report")


def test_default_profile_trains_in_process_from_the_committed_teacher_file() -> None:
    seed = stage_engines(load_config("tiny"), "02_seed")
    assert seed["teacher"] == "committed file data/seed/seed_compact_v2.jsonl"
    layout = "2 worker processes x 1 thread(s) x 16 rows in flight; float16, LoRA checkpoints merged"
    synth = f"llamacpp smollm2-135m-instruct ({layout})"
    assert seed["synthesizer"] == synth
    assert seed["training"] == "lora in-process (no launcher)"


@pytest.fixture
def finished_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    """A rehearsal run whose 02 finished (its marker written as Stage.finish writes it), nothing else."""
    monkeypatch.setenv("SCODER_OUTPUTS", str(tmp_path))
    run = Run.for_profile("paper-rehearsal", "rehearsal")
    ref = next(r for r in run.instances if r.key == "02_seed")
    folder = run.stage_dir(ref.key, ref.iteration)
    folder.mkdir(parents=True)
    write_json(folder / "metrics.json", {"enhanced_valid_rate": 0.5})
    engines = stage_engines(run.cfg, "02_seed")
    write_json(folder / MARKER, {"stage": "02_seed", "engines": engines, "notebook_wall_s": 3.0})
    return run


def test_index_shows_what_ran_each_stage(finished_run: Run) -> None:
    page = write_index(finished_run).read_text(encoding="utf-8")
    assert "ran with: " in page  # the roles in the marker's (sorted) order
    assert "teacher: openai replay-teacher (at http://127.0.0.1:8011/v1), 4 new samples bought" in page
    assert "training: lora under `accelerate launch --num_processes 2 --cpu`" in page
    walls = study.stage_walls(finished_run)
    assert walls.set_index("stage").loc["02_seed", "ran_with"].startswith("synthesizer: vllm smollm2")
    assert walls.set_index("stage").loc["01_preprocess", "ran_with"] == ""
    assert read_json(finished_run.marker(next(r for r in finished_run.instances if r.key == "02_seed")))["engines"]


def test_summary_lists_arms_costs_and_what_ran(finished_run: Run) -> None:
    facts = {"profile": "paper-rehearsal", "description": "d", "synthesizer": "s", "student": "t", "iterations": 1,
             "machine": "cpu", "isolation": "rlimits"}  # fmt: skip
    arms = pd.DataFrame(
        [{"arm": "no_influence", "data": "run", "source": "final synthesizer of run 'rehearsal-noinfluence' "
          "(profile paper-rehearsal_ablation_noinfluence)", "asked": 8, "available": 0, "got": 0}]
    ).set_index("arm")  # fmt: skip
    costs = pd.DataFrame([{"item": "teacher: bought through the API (replay-teacher)", "samples": 4, "usd": 0.02}])
    empty = pd.DataFrame()
    html = study.summary_html(
        facts, empty, empty, empty, study.stage_walls(finished_run), arms, costs.set_index("item")
    )
    assert "<h3>Arms</h3>" in html and "paper-rehearsal_ablation_noinfluence" in html
    assert "teacher: bought through the API (replay-teacher)" in html
    assert "<h3>What ran each stage</h3>" in html and "worker .venv-vllm/bin/python" in html
    # without the new tables (as before): no empty sections
    assert "<h3>Arms</h3>" not in study.summary_html(facts, empty, empty, empty, study.stage_walls(finished_run))
