"""An ablation run takes the stages it has in common with the method run (`pipeline.share`): which ones,
the links, its own marker, make's rules, and the bill. The real run through make is in test_e2e."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scoder_lib.core.config import ConfigError
from scoder_lib.core.io import read_json, write_json
from scoder_lib.core.params import load_config
from scoder_lib.core.run import MARKER, Run, StageRef
from scoder_lib.pipeline.bill.build import UP_TO_SYNTHESIZER, make_bill
from scoder_lib.pipeline.plan import make_rules, parent_run, plan
from scoder_lib.pipeline.reports import write_index
from scoder_lib.pipeline.share import clear_shared, is_shared, same_settings, share, shareable, stale
from scoder_lib.pipeline.stage import Stage

P01, P02, P03 = StageRef("01_preprocess"), StageRef("02_seed"), StageRef("03_sample_score", 1)
P04 = StageRef("04_influence", 1)


def _profile(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"inherit: smoke\n{body}\n", encoding="utf-8")
    return path


def _finish(run: Run, ref: StageRef, files: dict[str, str], settings_hash: str | None = None) -> Path:
    """A finished stage as Stage.finish leaves it: files, metrics, then the marker with its settings hash."""
    folder = run.stage_dir(ref.key, ref.iteration)
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    write_json(folder / "metrics.json", {"n": 1})
    marker = {"stage": ref.key, "iteration": ref.iteration, "run": run.name, "profile": run.cfg.profile}
    marker |= {"settings_hash": settings_hash or run.settings_hash(ref), "runner_wall_s": 12.5}
    write_json(folder / MARKER, marker)
    return folder


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Run, Run]:
    """The method run (smoke) with 01, 02 and 03@1 finished, and a no-influence ablation of it."""
    monkeypatch.setenv("SCODER_OUTPUTS", str(tmp_path / "outputs"))
    parent = Run.for_profile("smoke", "method")
    write_json(parent.dir / "run.json", {"profile": "smoke", "run": "method"})
    _finish(parent, P01, {"pool.jsonl": '{"key": "a"}\n'})
    _finish(parent, P02, {"synthesizer.json": '{"final": "ckpt-2"}', "enhanced/ckpt-2/adapter.bin": "weights"})
    _finish(parent, P03, {"selected.jsonl": '{"id": 1}\n'})
    ablation = Run.for_profile(str(_profile(tmp_path, "noinf", "influence: {select: random}")), "noinf")
    return parent, ablation


def test_an_ablation_shares_the_leading_stages_with_the_same_settings(runs, tmp_path):
    parent, ablation = runs
    # influence.select is read first by 04: 01, 02 and iteration 1's sampling and scoring are the same
    assert same_settings(ablation, parent) == [P01, P02, P03]
    assert shareable(ablation, parent) == [P01, P02, P03]
    # a change to the seed stage: only the pool is the same, and nothing after 02 (it reads 02's output)
    seed = Run.for_profile(str(_profile(tmp_path, "seedch", "seed_stage: {heldout_compare: 3}")), "seedch")
    assert same_settings(seed, parent) == [P01]
    # a switch in iterate: 03 differs, and 04 is not shared although its own sections are the same
    noscore = Run.for_profile(str(_profile(tmp_path, "nos", "iterate: {weights: {mode: none}}")), "nos")
    assert same_settings(noscore, parent) == [P01, P02]


def test_only_what_the_method_run_finished_under_these_settings_is_shared(runs):
    parent, ablation = runs
    parent.marker(P03).unlink()  # 03@1 not finished there: it and all after it run themselves
    assert shareable(ablation, parent) == [P01, P02]
    _finish(parent, P02, {}, settings_hash="another")  # 02 finished under other settings there
    assert shareable(ablation, parent) == [P01]
    with pytest.raises(ConfigError, match="cannot be shared"):
        share(ablation, parent, P02)
    with pytest.raises(ConfigError, match="itself"):
        shareable(parent, parent)


def test_nothing_is_taken_after_a_stage_the_ablation_computed_itself(runs):
    """Its own 02 (a rerun in JupyterLab, a run without SHARE_FROM) must not be paired with the method
    run's 03: the prefix ends there, and 01 stays takeable only while it is not its own either."""
    parent, ablation = runs
    share(ablation, parent, P01)
    _finish(ablation, P02, {"synthesizer.json": '{"final": "own"}'})
    assert shareable(ablation, parent) == [P01]
    with pytest.raises(ConfigError, match="cannot be shared"):
        share(ablation, parent, P03)
    _finish(ablation, P01, {"pool.jsonl": "own\n"})
    assert shareable(ablation, parent) == []


def test_share_links_the_files_and_writes_a_marker_of_its_own(runs):
    parent, ablation = runs
    theirs = parent.marker(P02).read_text(encoding="utf-8")
    for ref in (P01, P02):
        share(ablation, parent, ref)
    folder = ablation.upstream("02_seed")  # counts as finished
    assert is_shared(folder) and (folder / "enhanced").is_symlink()
    assert (folder / "enhanced" / "ckpt-2" / "adapter.bin").read_text() == "weights"
    assert json.loads((folder / "synthesizer.json").read_text()) == {"final": "ckpt-2"}
    marker = read_json(ablation.marker(P02))
    assert marker["run"] == "noinf" and marker["shared_from"]["run"] == "method"
    assert marker["settings_hash"] == ablation.settings_hash(P02) and marker["runner_wall_s"] == 12.5
    assert parent.marker(P02).read_text(encoding="utf-8") == theirs  # the method run's marker untouched
    page = write_index(ablation).read_text(encoding="utf-8")
    assert "taken from run <code>method</code>" in page
    with pytest.raises(ConfigError, match="cannot be shared"):
        share(ablation, parent, P04)


def test_a_stage_that_runs_itself_drops_the_links_not_the_method_runs_files(runs):
    parent, ablation = runs
    share(ablation, parent, P02)
    clear_shared(ablation, P02)
    assert not ablation.stage_dir("02_seed").exists()
    assert (parent.stage_dir("02_seed") / "enhanced" / "ckpt-2" / "adapter.bin").read_text() == "weights"
    # the notebook's own handle does it too (a user stepping through it in JupyterLab), then writes its own
    share(ablation, parent, P02)
    st = Stage(ablation, "02_seed")
    assert not is_shared(st.dir) and not st.run.marker(P02).exists()
    st.path("metrics.json").write_text("{}", encoding="utf-8")
    assert read_json(parent.stage_dir("02_seed") / "metrics.json") == {"n": 1}
    own = _finish(ablation, P01, {"pool.jsonl": "own\n"})
    clear_shared(ablation, P01)  # a folder of its own stays
    assert (own / "pool.jsonl").read_text() == "own\n"
    with pytest.raises(ConfigError, match="cannot be shared"):
        share(ablation, parent, P01)  # a finished stage of its own is not replaced
    ablation.marker(P01).unlink()  # an own run of it that did not finish: the method run's replaces it
    share(ablation, parent, P01)
    assert (own / "pool.jsonl").is_symlink() and (own / "pool.jsonl").read_text() == '{"key": "a"}\n'


def test_a_shared_stage_whose_source_changed_is_planned_again(runs):
    parent, ablation = runs
    for ref in (P01, P02):
        share(ablation, parent, ref)
    assert stale(ablation) == []
    _finish(parent, P02, {"synthesizer.json": '{"final": "ckpt-4"}'}, settings_hash=parent.settings_hash(P02))
    write_json(parent.marker(P02), read_json(parent.marker(P02)) | {"finished_at": "later"})  # computed again
    assert stale(ablation) == [P02]
    _finish(parent, P02, {}, settings_hash="other settings")
    assert stale(ablation) == [P02]
    parent.marker(P01).unlink()  # gone there
    assert stale(ablation) == [P01, P02]


def test_plan_drops_a_stale_share_and_takes_the_stage_again(runs, tmp_path):
    parent, ablation = runs
    for ref in (P01, P02):
        share(ablation, parent, ref)
    write_json(parent.marker(P02), read_json(parent.marker(P02)) | {"finished_at": "later"})  # computed again
    assert plan(ablation.profile, ablation.name, share_from="method") == 0
    assert ablation.marker(P01).exists() and not ablation.marker(P02).exists()
    rules = (ablation.stamps / "plan.mk").read_text(encoding="utf-8")
    assert "\t$(RUN_STAGE) --stage 02_seed --share-from method" in rules  # the same settings: taken again


def test_make_rules_link_shared_stages_and_wait_for_the_method_runs_markers(runs):
    parent, ablation = runs
    rules = make_rules(ablation, parent, shareable(ablation, parent)).splitlines()
    line = rules.index(next(r for r in rules if r.startswith("$(OUT)/iter_1/03_sample_score/_SUCCESS.json:")))
    assert "$(OUTPUTS)/method/iter_1/03_sample_score/_SUCCESS.json" in rules[line]
    assert rules[line + 1] == "\t$(RUN_STAGE) --stage 03_sample_score --iteration 1 --share-from method"
    own = rules.index(next(r for r in rules if r.startswith("$(OUT)/iter_1/04_influence/_SUCCESS.json:")))
    assert "method" not in rules[own] + rules[own + 1]
    with pytest.raises(ConfigError, match="no run 'nowhere'"):
        parent_run("nowhere")


def test_ablation_arms_pass_their_run_as_the_one_to_share_from():
    rules = make_rules(Run("paper", "paper", load_config("paper")))
    sub_make = "\t$(MAKE) --no-print-directory synthesizer PROFILE=paper_ablation_m1 RUN=paper-m1 SHARE_FROM=$(RUN)"
    assert sub_make in rules
    # under make -j, each sub-make waits (order-only) for the stages it may take
    wait = "$(OUTPUTS)/paper-noinfluence/iter_3/04_influence/_SUCCESS.json: FORCE | $(OUT)/01_preprocess/_SUCCESS.json "
    assert wait + "$(OUT)/02_seed/_SUCCESS.json $(OUT)/iter_1/03_sample_score/_SUCCESS.json\n" in rules


def test_the_bill_charges_an_ablation_only_for_the_stages_it_computes():
    bill = make_bill(load_config("paper"), "paper", "paper")
    dep = {d["arm"]: d for d in bill.dependencies}["no_influence"]
    assert dep["shared"] == ["01_preprocess", "02_seed", "03_sample_score@1"] and dep["usd"] == 0.0
    alone = make_bill(load_config("paper_ablation_noinfluence"), "paper_ablation_noinfluence", "paper-noinfluence")
    # the shared stages cost the same in both runs: what is left plus this run's part is the whole
    ours = sum(bill.total("gpu_s", stage=s) for s in dep["shared"]) / 3600
    assert dep["gpu_h_to_04"] + ours == pytest.approx(alone.total("gpu_s", prefixes=UP_TO_SYNTHESIZER) / 3600)
    assert dep["gpu_h_to_04"] < 0.9 * alone.total("gpu_s", prefixes=UP_TO_SYNTHESIZER) / 3600
