"""The study's backbone: strict params, notebook contract, stage markers, make skipping, interruption."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import time
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml
from conftest import PY, interruptible, make
from packaging.specifiers import SpecifierSet

from scoder_lib.core.config import REPO_ROOT, ConfigError
from scoder_lib.core.params import PARAMS_DIR, load_config
from scoder_lib.core.run import STAGES, Run, StageRef
from scoder_lib.pipeline.plan import make_rules

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


# ----------------------------------------------------------------------------- params
@pytest.mark.parametrize("path", sorted(PARAMS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_params_file_loads(path):
    cfg = load_config(path.stem)
    assert cfg.profile == path.stem


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "data,needle",
    [
        ({"synthesizer": {"name": "micro"}, "preprocess": {"dedupp": {}}}, "unknown key 'preprocess.dedupp'"),
        (
            {"synthesizer": {"name": "micro"}, "preprocess": {"dedup": {"num_perm": "many"}}},
            "preprocess.dedup.num_perm",
        ),
        ({"synthesizer": {"name": "micro"}, "iterate": {"iterations": 1.5}}, "iterate.iterations"),
        ({"preprocess": {}}, "missing required key 'synthesizer'"),
        (
            {"synthesizer": {"name": "micro"}, "preprocess": {"sources": [{"kind": "folder", "path": "/nope/x"}]}},
            "does not exist",
        ),
        (
            {"synthesizer": {"name": "micro"}, "evaluate": {"livecodebench_folder": "x"}},
            "'evaluate.livecodebench_folder' has moved: write it as 'benchmarks.livecodebench_folder'",
        ),
        (
            {"synthesizer": {"name": "micro"}, "evaluate": {"benchmarks": ["humaneval", "livecodebench"]}},
            "key 'evaluate.benchmarks' names livecodebench: set benchmarks.livecodebench_folder",
        ),
        (
            {"synthesizer": {"name": "micro"}, "benchmarks": {"livecodebench_folder": "/nope/lcb"}},
            "'benchmarks.livecodebench_folder': folder '/nope/lcb' does not exist",
        ),
    ],
)
def test_bad_params_fail_with_one_line(tmp_path, data, needle):
    with pytest.raises(ConfigError) as err:
        load_config(str(_write(tmp_path, data)))
    msg = str(err.value)
    assert needle in msg and "\n" not in msg and "bad.yaml" in msg


def test_unknown_key_message_lists_allowed_keys(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(str(_write(tmp_path, {"synthesizer": {"name": "micro", "batchsize": 4}})))
    assert "batch_size" in str(err.value)  # the allowed keys are listed


def test_bad_params_write_nothing(tmp_path):
    bad = _write(tmp_path, {"synthesizer": {"name": "micro"}, "seed_stage": {"trian": {}}})
    out = tmp_path / "outputs"
    proc = subprocess.run(
        [PY, "-m", "scoder_lib.pipeline.plan", "--profile", str(bad), "--run", "x"],
        capture_output=True,
        text=True,
        env={**os.environ, "SCODER_OUTPUTS": str(out)},
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "seed_stage.trian" in errors[0]
    assert not out.exists()


def test_vllm_backend_without_vllm_fails_at_plan(tmp_path):
    if __import__("importlib").util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    bad = _write(tmp_path, {"synthesizer": {"name": "micro", "backend": "vllm"}})
    proc = subprocess.run(
        [PY, "-m", "scoder_lib.pipeline.plan", "--profile", str(bad), "--run", "x"],
        capture_output=True,
        text=True,
        env={**os.environ, "SCODER_OUTPUTS": str(tmp_path / "o")},
    )
    assert proc.returncode != 0 and "synthesizer" in proc.stderr and "pip install vllm" in proc.stderr


# ----------------------------------------------------------------------------- notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_contract(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "committed with outputs"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one parameters cell"
    # literals only: every statement is `name = <literal>`
    for line in tagged[0].source.splitlines():
        if line.strip() and not line.strip().startswith("#"):
            name, _, value = line.partition("=")
            assert name.strip() in ("run", "iteration") and eval(value, {"__builtins__": {}}) is not None  # noqa: S307
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert "st.finish(" in code[-1].source, "the last cell writes metrics and the marker"
    assert "input(" not in "".join(c.source for c in code)
    # the library does the work: a notebook defines no function longer than a few lines
    for cell in code:
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, (ast.FunctionDef, ast.Lambda)):
                assert node.end_lineno - node.lineno < 5, f"a long function in {path.name}: {cell.source[:200]}"


def test_every_stage_has_its_notebook():
    missing = [sd.key for sd in STAGES if not sd.notebook.exists()]
    assert not missing, missing


# ----------------------------------------------------------------------------- the run object
def test_stage_table_orders_instances_and_make_rules(smoke_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("SCODER_OUTPUTS", str(tmp_path))
    run = Run(
        "r", "smoke", smoke_cfg.model_copy(update={"iterate": smoke_cfg.iterate.model_copy(update={"iterations": 3})})
    )
    ids = [ref.id for ref in run.instances]
    assert ids == [
        "01_preprocess",
        "02_seed",
        "03_sample_score@1",
        "04_influence@1",
        "03_sample_score@2",
        "04_influence@2",
        "03_sample_score@3",
        "04_influence@3",
        "05_final",
        "06_evaluate",
        "07_report",
    ]
    assert run.stage_dir("04_influence", 2) == tmp_path / "r" / "iter_2" / "04_influence"
    assert StageRef("05_final", 0).iteration is None and StageRef("03_sample_score", 2).name == "03_sample_score_iter2"
    with pytest.raises(ValueError, match="per iteration"):
        StageRef("03_sample_score")
    rules = make_rules(run)
    # each marker depends on its stamp and on the marker before it, in the table's order
    assert (
        "$(OUT)/iter_3/03_sample_score/_SUCCESS.json: $(STAMPS)/03_sample_score.iter3.hash "
        "$(OUT)/iter_2/04_influence/_SUCCESS.json" in rules
    )
    assert "$(OUT)/05_final/_SUCCESS.json: $(STAMPS)/05_final.hash $(OUT)/iter_3/04_influence/_SUCCESS.json" in rules
    assert "FINAL_MARKER := $(OUT)/07_report/_SUCCESS.json" in rules
    assert "SYNTHESIZER_MARKER := $(OUT)/iter_3/04_influence/_SUCCESS.json" in rules
    no_iterations = Run(
        "r", "smoke", smoke_cfg.model_copy(update={"iterate": smoke_cfg.iterate.model_copy(update={"iterations": 0})})
    )
    assert "$(OUT)/05_final/_SUCCESS.json: $(STAMPS)/05_final.hash $(OUT)/02_seed/_SUCCESS.json" in make_rules(
        no_iterations
    )


def test_ablation_arms_make_stage_05_wait_for_the_other_runs_synthesizers():
    paper = Run("paper", "paper", load_config("paper"))
    rules = make_rules(paper)
    final = next(line for line in rules.splitlines() if line.startswith("$(OUT)/05_final/_SUCCESS.json:"))
    assert "$(OUTPUTS)/paper-m1/iter_3/04_influence/_SUCCESS.json" in final
    assert "\t$(MAKE) --no-print-directory synthesizer PROFILE=paper_ablation_m1 RUN=paper-m1" in rules


def test_a_run_refuses_another_profiles_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SCODER_OUTPUTS", str(tmp_path))
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "run.json").write_text(json.dumps({"profile": "tiny", "run": "r"}))
    assert Run.open("r").profile == "tiny"
    with pytest.raises(ConfigError, match="made with profile 'tiny'"):
        Run.for_profile("smoke", "r")


# ----------------------------------------------------------------------------- runs
def _tiny_profile(tmp_path: Path, extra: int = 6) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for i in range(extra):
        (src / f"m{i}.py").write_text(
            f"def f{i}(values, k={i}):\n    total = 0\n    for v in values:\n        total += v * k + {i}\n"
            f"    return total\n"
        )
    (src / "broken.py").write_bytes(b"def f(:\n")
    (src / "latin.py").write_bytes(b"x = '\xe9'\n")
    data = {
        "synthesizer": {"name": "micro"},
        "preprocess": {
            "sources": [{"kind": "folder", "path": str(src)}],
            "decontam": {"benchmarks": ["humaneval"]},
            "extract": {"min_chars": 20},
        },
    }
    path = tmp_path / "unit.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _make(tmp_path: Path, profile: Path, *goals: str) -> subprocess.CompletedProcess:
    return make(*goals, outputs=tmp_path / "outputs", profile=profile, run="unit", timeout=600)


def test_stage_01_runs_skips_and_reruns_on_param_change(tmp_path):
    profile = _tiny_profile(tmp_path)
    marker = tmp_path / "outputs" / "unit" / "01_preprocess" / "_SUCCESS.json"
    first = _make(tmp_path, profile, str(marker))
    assert first.returncode == 0, first.stdout + first.stderr
    run = tmp_path / "outputs" / "unit"
    metrics = json.loads((run / "01_preprocess" / "metrics.json").read_text())
    assert metrics["pool_size"] == 6 and metrics["rejected_file_syntax"] == 1 and metrics["rejected_not_utf8"] == 1
    assert (run / "reports" / "01_preprocess.html").stat().st_size > 10_000
    assert "01_preprocess.html" in (run / "reports" / "index.html").read_text()

    again = _make(tmp_path, profile, str(marker))
    assert again.returncode == 0 and "is up to date" in again.stdout

    stamps = {p.name: p.stat().st_mtime for p in (run / ".stamps").glob("*.hash")}
    data = yaml.safe_load(profile.read_text())
    data["preprocess"]["dedup"] = {"threshold": 0.8}
    profile.write_text(yaml.safe_dump(data))
    third = _make(tmp_path, profile, str(marker))
    assert third.returncode == 0 and "running notebooks/01_preprocess.ipynb" in third.stderr
    changed = {p.name for p in (run / ".stamps").glob("*.hash") if p.stat().st_mtime != stamps[p.name]}
    assert changed == {"01_preprocess.hash"}  # only stage 01 depends on preprocess params


def test_interrupted_stage_is_not_done_and_rerun_completes(tmp_path):
    profile = _tiny_profile(tmp_path)
    env = {**os.environ, "SCODER_OUTPUTS": str(tmp_path / "outputs")}
    subprocess.run(
        [PY, "-m", "scoder_lib.pipeline.plan", "--profile", str(profile), "--run", "unit"], check=True, env=env
    )
    stage = [PY, "-m", "scoder_lib.pipeline.runner", "stage", "--run", "unit", "--stage", "01_preprocess"]
    proc = subprocess.Popen(
        stage,
        env=env,
        start_new_session=True,
        preexec_fn=interruptible,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    folder = tmp_path / "outputs" / "unit" / "01_preprocess"
    deadline = time.monotonic() + 120
    while not folder.exists() and time.monotonic() < deadline:  # the kernel has started the stage
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    proc.wait(timeout=120)
    assert proc.returncode != 0
    assert not (folder / "_SUCCESS.json").exists()
    assert subprocess.run(stage, env=env, capture_output=True).returncode == 0
    assert (folder / "_SUCCESS.json").exists()


# ----------------------------------------------------------------------------- environment
def test_environment_yml_is_a_thin_wrapper_over_pyproject():
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    python = next(d.split("=", 1)[1] for d in conda if d.startswith("python="))
    assert SpecifierSet(project["requires-python"]).contains(f"{python}.0"), (python, project["requires-python"])
    assert sorted(conda) == sorted([f"python={python}", "pip"]), "conda pins nothing pyproject.toml already says"
    assert len(pip) == 1 and pip[0].startswith("-e ."), "pip installs the project from the checkout"
    extras = re.findall(r"\[([^\]]*)\]", pip[0])
    assert all(e in project["optional-dependencies"] for x in extras for e in x.split(","))
