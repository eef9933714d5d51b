"""The bill of a run: every stage's work, priced, with the teacher's dollars and the runs it reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scoder_lib.core.config import Config
from scoder_lib.core.params import load_config
from scoder_lib.core.run import Run
from scoder_lib.pipeline.bill.assumptions import Assumptions, with_overrides
from scoder_lib.pipeline.bill.constants import CPU_IMPORT_S, GPUS, KERNEL_START_S, Gpu
from scoder_lib.pipeline.bill.context import Ctx
from scoder_lib.pipeline.bill.cost import price
from scoder_lib.pipeline.bill.final import ArmSize, evaluate, final
from scoder_lib.pipeline.bill.iterate import IterState, iteration
from scoder_lib.pipeline.bill.stages import preprocess, report, seed_stage
from scoder_lib.pipeline.bill.work import Work
from scoder_lib.pipeline.share import same_settings

UP_TO_SYNTHESIZER = ("01_preprocess", "02_seed", "03_sample_score", "04_influence")


@dataclass
class Bill:
    profile: str
    run: str
    gpu: Gpu
    assumptions: Assumptions
    works: list[Work]
    arms: list[ArmSize]
    cpu_sized: bool  # every model small: the CPU estimate is the one that matters
    warnings: list[str] = field(default_factory=list)
    cpu_warnings: list[str] = field(default_factory=list)  # about the CPU estimate only
    dependencies: list[dict[str, Any]] = field(default_factory=list)

    def stages(self) -> list[str]:
        return list(dict.fromkeys(w.stage for w in self.works))

    def total(self, name: str, stage: str | None = None, prefixes: tuple[str, ...] = ()) -> float:
        return sum(
            float(getattr(w, name))
            for w in self.works
            if (stage is None or w.stage == stage) and (not prefixes or w.stage.split("@")[0] in prefixes)
        )

    @property
    def teacher_usd(self) -> float:
        return self.total("usd")


def make_bill(
    cfg: Config, profile: str, run: str, gpu: str = "H100", assume: list[str] | None = None, deps: bool = True
) -> Bill:
    """Count and price every stage of a run of `cfg`; with `deps`, also bill the runs its arms read."""
    if gpu not in GPUS:
        raise ValueError(f"unknown GPU '{gpu}'; known: {', '.join(GPUS)}")
    a = with_overrides(Assumptions(), assume or [])
    c = Ctx.of(cfg, a)
    works, arms = count(c)
    cpu_warnings: list[str] = []
    for w in works:
        price(w, GPUS[gpu], a, cpu_warnings)
    cpu_sized = all(c.small(role) for role in ("synthesizer", "scorer", "student"))
    bill = Bill(profile, run, GPUS[gpu], a, works, arms, cpu_sized, c.warnings, cpu_warnings)
    if deps:
        bill.dependencies = dependencies(cfg, profile, run, gpu, assume or [])
    return bill


def count(c: Ctx) -> tuple[list[Work], list[ArmSize]]:
    """Every stage's work in the runner's order (each stage opened by its notebook's start), and the arms."""
    works = preprocess(c)
    w02, checkpoints = seed_stage(c)
    works += w02
    state = IterState(checkpoints)
    for t in range(1, c.cfg.iterate.iterations + 1):
        w03, w04, state = iteration(c, t, state)
        works += w03 + w04
    w05, arms = final(c)
    works += w05 + evaluate(c, arms) + report(c)
    out: list[Work] = []
    for w in works:
        # 01's and 07's figures are whole measured stages; the others start a kernel and import torch.
        if (not out or out[-1].stage != w.stage) and w.stage not in ("01_preprocess", "07_report"):
            start = KERNEL_START_S.value + CPU_IMPORT_S.value
            out.append(Work(w.stage, "notebook: kernel start and imports", "host", host_s=start))
        out.append(w)
    return out, arms


def dependencies(cfg: Config, profile: str, run: str, gpu: str, assume: list[str]) -> list[dict[str, Any]]:
    """Arms that read another run's final synthesizer: that run's bill up to 04 (what the arm needs),
    less the leading stages it takes from this run (`share.same_settings`: computed once, here)."""
    out = []
    this = Run(run, profile, cfg)
    for arm in (a for a in cfg.final.arms if a.enabled and a.data == "run"):
        other_cfg = load_config(arm.profile or "")
        other = make_bill(other_cfg, arm.profile or "", arm.run or "", gpu, assume, deps=False)
        shared = [ref.id for ref in same_settings(Run(arm.run or "", arm.profile or "", other_cfg), this)]
        own = [s for s in other.stages() if s.split("@")[0] in UP_TO_SYNTHESIZER and s not in shared]
        out.append(
            {
                "arm": arm.name,
                "run": arm.run,
                "profile": arm.profile,
                "shared": shared,
                "gpu_h_to_04": sum(other.total("gpu_s", stage=s) for s in own) / 3600,
                "gpu_h_all": other.total("gpu_s") / 3600,
                "cpu_h_to_04": sum(other.total("cpu_s", stage=s) for s in own) / 3600,
                "disk_bytes_to_04": sum(other.total("disk_bytes", stage=s) for s in own),
                "usd": sum(other.total("usd", stage=s) for s in own),  # the teacher is bought in 02
            }
        )
    return out
