"""Plan a run before any work: validate params, refresh the stamps make compares, write make's rules.

    python -m scoder_lib.pipeline.plan --profile tiny --run tiny
    python -m scoder_lib.pipeline.plan --profile paper_ablation_m1 --run paper-m1 --share-from paper
    python -m scoder_lib.pipeline.plan --profile paper --run paper --dry-run [--gpu H100] [--json bill.json]

Make calls this on every invocation, so it imports nothing heavy (no torch, papermill, nbconvert).
`--dry-run` writes nothing: it prints the arms and the bill (`make plan`), still without a model.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from scoder_lib.core import cli
from scoder_lib.core.config import Config, ConfigError
from scoder_lib.core.io import write_json, write_text
from scoder_lib.core.logs import get_logger
from scoder_lib.core.params import load_config
from scoder_lib.core.run import MARKER, Run, StageRef, outputs_root
from scoder_lib.llm.base import require_backend
from scoder_lib.method import arm_specs
from scoder_lib.pipeline import share
from scoder_lib.pipeline.bill.build import make_bill
from scoder_lib.pipeline.bill.constants import GPUS
from scoder_lib.pipeline.bill.render import render, to_json
from scoder_lib.sandbox.isolation import banner

log = get_logger(__name__)


def plan(profile: str, name: str, share_from: str | None = None) -> int:
    """Validate params, refresh stamps whose settings hash changed, and write make's rules (plan.mk).
    `share_from`: the run this one ablates; its leading stages with the same settings are linked."""
    run = Run.for_profile(profile, name)  # raises ConfigError before anything is written
    check_backends(run)
    for ref in share.stale(run):  # first: a stage whose marker goes here may be taken again below
        log.warning("stage %s was taken from another run whose stage has changed since: it is redone", ref.id)
        run.marker(ref).unlink()
    parent = shared = None
    if share_from:
        parent = parent_run(share_from)
        shared = share.shareable(run, parent)
        log.info(
            "run %s takes from run %s (the same settings, finished there): %s; runs itself: the rest",
            run.name,
            parent.name,
            ", ".join(ref.id for ref in shared) or "nothing",
        )
        if missed := [ref.id for ref in share.same_settings(run, parent) if ref not in shared]:
            log.warning(
                "run %s computes %s itself although run %s has the same settings: not finished there, or "
                "already computed here (delete those stages' markers here to take them)",
                run.name,
                ", ".join(missed),
                parent.name,
            )
    run.stamps.mkdir(parents=True, exist_ok=True)
    if not (run.dir / "run.json").exists():
        write_json(run.dir / "run.json", {"profile": run.profile, "run": run.name})
    _write_if_changed(run.dir / "params.resolved.json", run.params_json() + "\n")
    changed = [
        ref.id for ref in run.instances if _write_if_changed(run.stamps / ref.stamp, run.settings_hash(ref) + "\n")
    ]
    _write_if_changed(run.stamps / "plan.mk", make_rules(run, parent, shared or []))
    write_text(run.stamps / "plan_started", f"{time.time()}\n")
    if changed:
        log.info("settings changed (or new) for: %s", ", ".join(changed))
    line = banner(run.cfg.execution.isolation)
    print(f"\n*** {line} ***\n", file=sys.stderr)
    if line.startswith("UNTRUSTED CODE WILL NOT RUN"):
        raise ConfigError(f"execution.isolation: {run.cfg.execution.isolation} cannot be honoured here: {line}")
    return 0


def _marker(run: Run, ref: StageRef, root: str = "$(OUT)") -> str:
    return f"{root}/{run.stage_dir(ref.key, ref.iteration).relative_to(run.dir)}/{MARKER}"


def synthesizer_ref(run: Run) -> StageRef:
    """The last stage that trains a synthesizer (the last iteration's 04, or 02 without iterations)."""
    before_final = [ref for ref in run.instances if ref.key < "05"]
    return before_final[-1]


def parent_run(name: str) -> Run:
    """The run SHARE_FROM names; it must exist (planned by make) under the outputs folder."""
    if not (outputs_root() / name / "run.json").exists():
        raise ConfigError(
            f"SHARE_FROM={name}: no run '{name}' in {outputs_root()}: run it first, or leave SHARE_FROM unset"
        )
    return Run.open(name)


def make_rules(run: Run, parent: Run | None = None, shared: list[StageRef] | None = None) -> str:
    """make's rules for every stage instance: marker <- its stamp and the marker before it.

    Paths are written through the Makefile's $(OUT), $(STAMPS) and $(OUTPUTS), so they match however
    make was called (relative or absolute OUTPUTS). An arm fed by another run (an ablation) makes stage
    05 depend on that run's final synthesizer, built by a sub-make of that run's profile, which shares
    this run's stages with the same settings. A `shared` stage also depends on `parent`'s marker, and its
    recipe links the parent's files (`runner stage --share-from`) instead of running the notebook.
    """
    lines = ["# Written by `python -m scoder_lib.pipeline.plan` from the stage table; do not edit.", ""]
    previous = None
    ablations = _ablation_rules(run)
    for ref in run.instances:
        deps = f"$(STAMPS)/{ref.stamp}" + (f" {_marker(run, previous)}" if previous else "")
        if ref.key == "05_final":
            deps += "".join(f" {m}" for m, _, _ in ablations)
        flag = f" --iteration {ref.iteration}" if ref.iteration else ""
        if parent is not None and ref in (shared or []):
            deps += f" {_marker(parent, ref, f'$(OUTPUTS)/{parent.name}')}"
            flag += f" --share-from {parent.name}"
        lines += [f"{_marker(run, ref)}: {deps}", f"\t$(RUN_STAGE) --stage {ref.key}{flag}", ""]
        previous = ref
    for m, recipe, wait in ablations:
        # order-only: under make -j the sub-make starts only once the stages it may take have finished
        lines += [f"{m}: FORCE" + (f" | {' '.join(wait)}" if wait else ""), f"\t{recipe}", ""]
    lines += [
        f"FINAL_MARKER := {_marker(run, run.instances[-1])}",
        f"SYNTHESIZER_MARKER := {_marker(run, synthesizer_ref(run))}",
    ]
    return "\n".join(lines) + "\n"


def _ablation_rules(run: Run) -> list[tuple[str, str, list[str]]]:
    """Per arm fed by a run: the marker of that run's final synthesizer, the sub-make that builds it, and
    this run's markers of the stages it may take (`share.same_settings`)."""
    out = []
    for arm in run.cfg.final.arms:
        if arm.enabled and arm.data == "run" and arm.run and arm.profile:
            other = Run(arm.run, arm.profile, load_config(arm.profile))
            out.append(
                (
                    _marker(other, synthesizer_ref(other), f"$(OUTPUTS)/{arm.run}"),
                    f"$(MAKE) --no-print-directory synthesizer PROFILE={arm.profile} RUN={arm.run} SHARE_FROM=$(RUN)",
                    [_marker(run, ref) for ref in share.same_settings(other, run)],
                )
            )
    return out


def check_backends(run: Run) -> None:
    """Fail before any work if a model asks for a backend whose package is missing."""
    cfg = run.cfg
    specs = [
        ("synthesizer", cfg.synthesizer),
        ("final.student", cfg.final.student),
        ("iterate.scorer", cfg.iterate.scorer),
    ]
    if cfg.seed_stage.teacher.backend == "openai":
        specs.append(("seed_stage.teacher.model", cfg.seed_stage.teacher.model))
    for where, spec in specs:
        if spec is not None:
            require_backend(spec, f"{run.profile}: {where}")


def _write_if_changed(path: Path, text: str) -> bool:
    """Rewrite only on change, so the file's mtime tells make whether the stage is stale."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    write_text(path, text)
    return True


def sampling_rule(cfg: Config) -> str:
    """How many candidates per snippet, and how stage 03 picks among them."""
    it = cfg.iterate
    m = it.checkpoints or cfg.seed_stage.train.num_checkpoints
    pick = (
        "the best-scoring eligible candidate"
        if it.weights.mode != "none"
        else "a random eligible candidate (seeded; no scoring)"
    )
    return (
        f"{m} checkpoint(s) x {it.samples_per_checkpoint} samples = {m * it.samples_per_checkpoint} candidates "
        f"per snippet; {pick} per snippet, then {it.keep_top_fraction:.0%} of the snippets' count kept"
    )


def keep_rule(cfg: Config) -> str:
    """How stage 04 keeps candidates and what the next synthesizer trains on."""
    inf = cfg.influence
    how = {
        "influence": "by influence",
        "random": "the same count kept at random (seeded)",
        "score": "the same count kept by aspect score",
    }[inf.select]
    return f"{inf.keep_fraction:.0%} of the selected, {how}; the next synthesizer trains on: {inf.train_data}"


def _changes(main: dict[str, Any], other: dict[str, Any], prefix: str = "") -> list[str]:
    """Leaf settings that differ between two resolved configs (what an ablation switches)."""
    out = []
    for key in sorted(set(main) | set(other)):
        path = f"{prefix}{key}"
        if path in ("profile", "description", "inherit", "final.arms"):
            continue
        a, b = main.get(key), other.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changes(a, b, f"{path}.")
        elif a != b:
            out.append(f"{path}: {a} -> {b}")
    return out


def describe_arms(run: Run) -> str:
    """The arms and ablations a profile asks for, before any work: source, asked size, what each keeps."""
    cfg, fin = run.cfg, run.cfg.final
    lines = [
        f"Arms of run '{run.name}' (profile {run.profile}): equalize {fin.equalize}, shortfall tolerance "
        f"{fin.shortfall_tolerance:.0%}, student format {fin.student_format}",
        f"  method: {sampling_rule(cfg)}",
        f"          {keep_rule(cfg)}",
    ]
    for arm in (a for a in fin.arms if a.enabled):
        asked = arm_specs.asked_size(run, arm)
        lines.append(
            f"  {arm.name:<22} asked {asked if asked is not None else 'all':>8}  {arm_specs.describe(run, arm)}"
        )
        if arm.data == "run" and arm.profile:
            other = load_config(arm.profile)
            changed = _changes(cfg.model_dump(mode="json"), other.model_dump(mode="json"))
            same = share.same_settings(Run(arm.run or "", arm.profile, other), run)
            lines += [
                f"  {'':<22} run '{arm.run}' = profile {arm.profile}; changes: {'; '.join(changed) or 'none'}",
                f"  {'':<22} takes from this run (the same settings): {', '.join(r.id for r in same) or 'nothing'}",
                f"  {'':<22} {sampling_rule(other)}",
                f"  {'':<22} {keep_rule(other)}",
            ]
    return "\n".join(lines)


def dry_run(profile: str, name: str, gpu: str, assume: list[str], json_path: Path | None) -> int:
    """Print the arms and the bill of a run; write the bill as JSON when asked. Nothing else is written."""
    run = Run.for_profile(profile, name)
    bill = make_bill(run.cfg, run.profile, run.name, gpu=gpu, assume=assume)
    print(describe_arms(run), render(bill), sep="\n\n")
    if json_path is not None:
        write_json(json_path, to_json(bill))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = cli.parser("scoder_lib.pipeline.plan", __doc__)
    ap.add_argument("--profile", required=True, help="params/<profile>.yaml, or a path to a .yaml")
    ap.add_argument("--run", required=True, help="the run's folder name under outputs/")
    ap.add_argument("--share-from", default=None, metavar="RUN", help="link this run's stages with the same settings")
    ap.add_argument("--dry-run", action="store_true", help="print the arms and the bill; write nothing else")
    ap.add_argument("--gpu", default="H100", choices=sorted(GPUS), help="the GPU the bill prices (dry run)")
    ap.add_argument("--assume", action="append", default=[], metavar="NAME=VALUE", help="override a guess of the bill")
    ap.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the bill as JSON (dry run)")
    args = ap.parse_args(argv)
    if args.dry_run:
        return cli.run(lambda: dry_run(args.profile, args.run, args.gpu, args.assume, args.json))
    return cli.run(lambda: plan(args.profile, args.run, args.share_from))


if __name__ == "__main__":
    sys.exit(main())
