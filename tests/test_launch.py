"""Training under a launcher: resolved from this interpreter (not PATH), really data-parallel, and
its checkpoints (LoRA weights, whole Adam moments) equal to one process's on the same global batches."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from scoder_lib.core.config import LoraOptions, TrainOptions
from scoder_lib.method.launch import LaunchError, leave_process_group, plan_launch, run_launched
from scoder_lib.method.moments import full_moments, sharding
from scoder_lib.method.train import Example, data_order, sft

HERE = Path(__file__).parent
BARE_PATH = "/usr/bin:/bin"  # as a notebook kernel may run: the venv's bin/ is not on PATH


# ----------------------------------------------------------------------------- resolving the launcher
def test_launchers_run_as_modules_of_this_interpreter():
    acc = plan_launch("accelerate launch --num_processes 4 --mixed_precision bf16")
    assert acc.argv == [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "4",
        "--mixed_precision",
        "bf16",
    ]
    assert acc.processes == 4 and acc.env == {}
    assert acc.command("pkg.mod", "--job", "j.json")[-4:] == ["-m", "pkg.mod", "--job", "j.json"]
    tr = plan_launch("torchrun --nnodes 2 --nproc-per-node=8")
    assert tr.argv[:3] == [sys.executable, "-m", "torch.distributed.run"] and tr.processes == 16
    assert plan_launch("torchrun --nproc_per_node gpu").processes is None  # the launcher decides
    assert plan_launch("accelerate launch --config_file ds.yaml").processes is None
    assert plan_launch("python").argv == [sys.executable] and plan_launch("python3").processes == 1


def test_accelerate_cpu_with_several_processes_really_starts_them():
    """accelerate's --cpu launcher starts one process without mpirun: the plan uses its multi-process one."""
    plan = plan_launch("accelerate launch --num_processes 2 --cpu")
    assert "--cpu" not in plan.argv and "--multi_gpu" in plan.argv and plan.processes == 2
    assert plan.env == {"ACCELERATE_USE_CPU": "true"}
    port = plan.argv[plan.argv.index("--main_process_port") + 1]
    assert port.isdigit() and int(port) > 0
    one = plan_launch("accelerate launch --num_processes 1 --cpu")
    assert "--cpu" in one.argv and one.env == {}


@pytest.mark.parametrize(
    "launcher, message",
    [
        ("accelerate --num_processes 2", "needs its 'launch' command"),
        ("no-such-launcher -n 2", "no program 'no-such-launcher'"),
        ("", "empty"),
    ],
)
def test_unusable_launchers_are_refused_clearly(launcher, message):
    with pytest.raises(LaunchError, match=message):
        plan_launch(launcher)


def test_a_launcher_whose_package_is_missing_is_named():
    try:
        import deepspeed  # noqa: F401, PLC0415 - only its absence is tested
    except ImportError:
        with pytest.raises(LaunchError, match="needs the 'deepspeed' package"):
            plan_launch("deepspeed --num_gpus 2")
    else:
        pytest.skip("deepspeed is installed")


def test_a_failing_job_raises_with_its_last_lines(monkeypatch):
    monkeypatch.setenv("PATH", BARE_PATH)
    with pytest.raises(LaunchError, match=r"(?s)exit code 1.*No module named '?scoder_lib.no_such_module"):
        run_launched(plan_launch("python"), "scoder_lib.no_such_module")


def test_accelerate_runs_without_the_venv_on_path(tmp_path, monkeypatch):
    """The reported failure: FileNotFoundError 'accelerate' when the venv's bin/ is not on PATH."""
    monkeypatch.setenv("PATH", BARE_PATH)
    monkeypatch.chdir(tmp_path)  # the child finds this scoder_lib through PYTHONPATH, not the cwd
    run_launched(plan_launch("accelerate launch --num_processes 1 --cpu"), "scoder_lib.core.cli")


def test_a_rank_leaves_its_process_group(tmp_path):
    """The group ends in the job, not at interpreter exit (where gloo may abort a finished job)."""
    import torch.distributed as dist  # noqa: PLC0415

    leave_process_group()  # no group: nothing to do
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        leave_process_group()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- whole moments
def test_moments_need_adam_state():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    with pytest.raises(ValueError, match="no Adam moments for any of the 2 trainable parameters"):
        full_moments(model, opt)


def test_deepspeed_optimizer_is_recognised():
    """A DeepSpeed ZeRO optimizer (inside accelerate's wrapper) is read through DeepSpeed's gather."""
    zero = type("DeepSpeedZeroOptimizer", (), {"__module__": "deepspeed.runtime.zero.stage_1_and_2"})()
    wrapper = types.SimpleNamespace(optimizer=zero)
    model = torch.nn.Linear(3, 2)
    assert sharding(model, wrapper) == "deepspeed"
    assert sharding(model, torch.optim.AdamW(model.parameters())) == "none"
    try:
        import deepspeed  # noqa: F401, PLC0415 - only its absence is tested
    except ImportError:
        with pytest.raises(ImportError, match="deepspeed does not import"):
            full_moments(model, wrapper)


@pytest.mark.slow
def test_fsdp_moments_are_gathered_whole(tmp_path):
    """FSDP2 over gloo, 2 processes with half the batch each: the gathered moments equal one process's."""
    job = str(HERE / "fsdp_moments_job.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, job, str(tmp_path / "one.st")], check=True, env=env, timeout=300)
    plan = plan_launch("torchrun --standalone --nproc_per_node 2")
    subprocess.run([*plan.argv, job, str(tmp_path / "two.st")], check=True, env=env, timeout=300)
    one, two = load_file(str(tmp_path / "one.st")), load_file(str(tmp_path / "two.st"))
    assert sorted(one) == sorted(two) and "exp_avg.0.bias" not in one  # frozen: no moments
    assert {k: tuple(v.shape) for k, v in two.items() if k.startswith("exp_avg.")} == {
        "exp_avg.0.weight": (6, 8),
        "exp_avg.2.weight": (4, 6),
        "exp_avg.2.bias": (4,),
    }
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- data-parallel training
def _examples(n: int) -> list[Example]:
    return [Example.of([{"role": "user", "content": f"q{i}"}], f"a{i} " * (i % 3 + 1)) for i in range(n)]


@pytest.mark.slow
def test_two_processes_train_as_one_on_the_same_global_batches(micro_ref, tmp_path, monkeypatch):
    """1 process x batch 4 vs `accelerate launch --num_processes 2 --cpu` x batch 2 (DDP over gloo),
    launched without the venv's bin/ on PATH: the ranks see disjoint halves of each global batch,
    and the losses, LoRA weights and Adam moments at every checkpoint agree."""
    opts = TrainOptions(
        epochs=2,
        batch_size=4,
        num_checkpoints=2,
        max_seq_len=64,
        learning_rate=1e-2,
        lora=LoraOptions(r=4, dropout=0.0),
    )
    examples = _examples(8)
    one = sft(examples, micro_ref.path, tmp_path / "one", opts, micro_ref.fingerprint)
    monkeypatch.setenv("PATH", BARE_PATH)
    launched = opts.model_copy(update={"batch_size": 2, "launcher": "accelerate launch --num_processes 2 --cpu"})
    two = sft(examples, micro_ref.path, tmp_path / "two", launched, micro_ref.fingerprint)

    assert (one.world_size, two.world_size) == (1, 2) and one.steps == two.steps == 4
    single, ranks = data_order(one.folder)[0], data_order(two.folder)
    assert [len(b) for b in ranks[0]] == [len(b) for b in ranks[1]] == [2] * 4
    for step, batch in enumerate(single):
        assert not set(ranks[0][step]) & set(ranks[1][step])  # two processes, disjoint halves
        assert ranks[0][step] + ranks[1][step] == batch  # ... of the very global batch one process sees
    assert np.allclose([x for _, x in two.losses], [x for _, x in one.losses], rtol=1e-5)
    assert [c.name for c in two.checkpoints] == [c.name for c in one.checkpoints] == ["ckpt-2", "ckpt-4"]
    for a, b in zip(one.checkpoints, two.checkpoints):
        for name in ("adapter_model.safetensors", "moments.safetensors"):
            ta, tb = load_file(str(a / name)), load_file(str(b / name))
            assert sorted(ta) == sorted(tb) and len(ta) > 1
            for k in ta:
                torch.testing.assert_close(tb[k], ta[k], rtol=1e-4, atol=1e-6)
    again = sft(examples, micro_ref.path, tmp_path / "two", launched, micro_ref.fingerprint)
    assert again.wall_s == two.wall_s  # reused: nothing launched
