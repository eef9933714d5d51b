"""Supervised fine-tuning on chat (prompt, response) pairs with the Hugging Face Trainer.

Loss on response tokens only; LoRA (peft) or full fine-tuning; M checkpoints evenly spaced over
training, each with the Adam moments of every trainable parameter keyed by name and its average
learning rate (what optimizer-aware influence needs). Built on Trainer, so it scales without code
changes: set `train.launcher` (e.g. "accelerate launch --num_processes 8 --config_file ds.yaml")
and `sft` runs this module's CLI under that launcher (see `launch`), with `train.extra_args` going
to TrainingArguments (deepspeed, fsdp, bf16 ...):

    python -m accelerate.commands.launch ... -m scoder_lib.method.train --job JOB.json

Under N processes `batch_size` is per process: one optimizer step sees a global batch of
batch_size x grad_accum x N examples, the N per-process batches being consecutive batches of the
one seeded order (so 2 processes x 2 see what 1 process x 4 sees, step by step). The logged loss
is the global batch's (token-weighted mean over all processes). Rank 0 alone writes checkpoints,
moments and the _TRAINED.json marker; every rank logs the examples it trained on (`data_order`).
"""

from __future__ import annotations

import argparse
import inspect
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from accelerate.utils import get_int_from_env
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedTokenizerBase

from scoder_lib.core.config import TrainOptions
from scoder_lib.core.hashing import fingerprint
from scoder_lib.core.io import read_json, write_json
from scoder_lib.core.logs import get_logger, setup_logging
from scoder_lib.method.checkpoints import Checkpoints, save_points
from scoder_lib.method.launch import LaunchError, LaunchPlan, leave_process_group, plan_launch, run_launched
from scoder_lib.method.moments import load_moments, save_moments

# load_moments, save_moments, save_points: re-exported (their home moved; callers import them from here)
__all__ = [
    "DONE",
    "IGNORE",
    "Example",
    "TrainResult",
    "data_order",
    "encode",
    "load_moments",
    "save_moments",
    "save_points",
    "sft",
]

log = get_logger(__name__)
IGNORE = -100
DONE = "_TRAINED.json"


@dataclass(frozen=True)
class Example:
    messages: tuple[tuple[str, str], ...]  # the prompt turns
    response: str

    @classmethod
    def of(cls, messages: list[dict[str, str]], response: str) -> Example:
        return cls(tuple((m["role"], m["content"]) for m in messages), response)


@dataclass
class TrainResult:
    folder: Path
    checkpoints: list[Path]  # M checkpoints, last = the trained model
    losses: list[tuple[int, float]]  # (step, training loss)
    steps: int
    skipped: int  # examples that did not fit max_seq_len (see TrainOptions.long_examples)
    wall_s: float
    world_size: int = 1  # data-parallel processes that trained

    @property
    def final(self) -> Path:
        return self.checkpoints[-1]


def encode(
    tok: PreTrainedTokenizerBase, ex: Example, max_len: int, truncate: bool = True
) -> dict[str, list[int]] | None:
    """input_ids/labels with prompt tokens masked; None if the prompt alone does not fit, or if the
    whole example does not fit and `truncate` is off."""
    msgs = [{"role": r, "content": c} for r, c in ex.messages]
    prompt = list(
        tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    )
    response = tok(ex.response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    if len(prompt) >= max_len or (not truncate and len(prompt) + len(response) > max_len):
        return None
    ids = (prompt + response)[:max_len]
    labels = ([IGNORE] * len(prompt) + response)[:max_len]
    return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}


def _build_model(base: str, opts: TrainOptions, adapter: str | None) -> Any:

    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if opts.method == "full":
        return model

    if adapter:  # continue training an earlier synthesizer's adapter
        return PeftModel.from_pretrained(model, adapter, is_trainable=True)
    n_layers = model.config.num_hidden_layers
    layers = None
    if opts.lora.last_layers:
        layers = list(range(max(0, n_layers - opts.lora.last_layers), n_layers))
    cfg = LoraConfig(
        r=opts.lora.r,
        lora_alpha=opts.lora.alpha,
        lora_dropout=opts.lora.dropout,
        target_modules=list(opts.lora.target_modules),
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


def sft(
    examples: list[Example], base: str, out: Path, opts: TrainOptions, base_fingerprint: str, adapter: str | None = None
) -> TrainResult:
    """Train (or reuse, if `out` already holds this exact run) and return its checkpoints."""

    plan = plan_launch(opts.launcher) if opts.launcher else None
    material = {
        "base": base_fingerprint,
        "adapter": adapter and str(adapter),
        "opts": opts.model_dump(exclude={"launcher"}),
        "data": fingerprint([[list(e.messages), e.response] for e in examples]),
    }
    # The global batch grows with the processes, so their number is part of the run (one process
    # keeps the key it always had; a launcher that does not say how many is keyed by its text).
    processes = 1 if plan is None else plan.processes or plan.launcher
    if processes != 1:
        material["processes"] = processes
    key = fingerprint(material)
    done = out / DONE
    if done.exists() and read_json(done)["key"] == key:
        log.info("training in %s already done: reusing", out)
        return _result(out)
    if out.exists() and done.exists():
        shutil.rmtree(out)  # a different run trained here before
    if plan is not None:
        return _launch(plan, examples, base, out, opts, key, adapter)
    return _train(examples, base, out, opts, key, adapter)


def _train(
    examples: list[Example], base: str, out: Path, opts: TrainOptions, key: str, adapter: str | None
) -> TrainResult:
    """Train in this process: alone, or as one rank of a launched data-parallel job."""
    start = time.monotonic()
    trainer, n_skipped, points = _trainer(examples, base, out, opts, adapter)
    resume = _latest_hf_checkpoint(out)
    if resume:
        log.info("resuming interrupted training from %s", resume.name)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    rank, world = trainer.args.process_index, trainer.args.world_size
    write_json(out / "ranks" / f"rank-{rank}.json", {"rank": rank, "world_size": world, "batches": trainer.seen})
    trainer.accelerator.wait_for_everyone()  # no rank still writes into checkpoint-* when rank 0 removes them
    if trainer.is_world_process_zero():
        for hf in out.glob("checkpoint-*"):
            shutil.rmtree(hf)  # resume state; our ckpt-* folders keep what later stages need
        write_json(
            out / DONE,
            {
                "key": key,
                "steps": trainer.state.global_step,
                "save_points": points,
                "losses": [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h],
                "skipped": n_skipped,
                "world_size": world,
                "wall_s": round(time.monotonic() - start, 1),
            },
        )
    trainer.accelerator.wait_for_everyone()  # the marker exists before any rank reads it
    return _result(out)


def _result(out: Path) -> TrainResult:
    meta = read_json(out / DONE)
    ckpts = [out / f"ckpt-{s}" for s in meta["save_points"]]
    losses = [tuple(x) for x in meta["losses"]]
    return TrainResult(out, ckpts, losses, meta["steps"], meta["skipped"], meta["wall_s"], meta.get("world_size", 1))


def data_order(folder: Path) -> dict[int, list[list[int]]]:
    """For each rank of a finished training: the batches it trained on, as indices into sft's `examples`."""
    world = read_json(folder / DONE).get("world_size", 1)
    return {r: read_json(folder / "ranks" / f"rank-{r}.json")["batches"] for r in range(world)}


def _latest_hf_checkpoint(out: Path) -> Path | None:
    found = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return found[-1] if found else None


def _trainer(examples: list[Example], base: str, out: Path, opts: TrainOptions, adapter: str | None):

    tok = transformers.AutoTokenizer.from_pretrained(base)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    truncate = opts.long_examples == "truncate"
    encoded = [encode(tok, e, opts.max_seq_len, truncate) for e in examples]
    rows = [{**r, "row": i} for i, r in enumerate(encoded) if r is not None]
    if not rows:
        raise ValueError(f"no training example fits max_seq_len={opts.max_seq_len}")
    world = get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1)
    per_step = opts.batch_size * opts.grad_accum * world  # the global batch
    total = opts.max_steps or max(1, math.ceil(len(rows) / per_step * opts.epochs))
    points = save_points(total, opts.num_checkpoints)
    if len(points) < opts.num_checkpoints:  # the next stage samples from fewer checkpoints (M) than asked
        log.warning(
            "%d training steps: saving %d checkpoint(s), not the %d asked (num_checkpoints)",
            total,
            len(points),
            opts.num_checkpoints,
        )
    args = _arguments(out, opts, total)
    if args.world_size != world:
        raise RuntimeError(
            f"started as {world} processes, but the Trainer runs as {args.world_size}: each process would "
            f"train alone on all the data (no process group over them; on CPUs it needs use_cpu)"
        )
    transformers.set_seed(opts.seed)  # LoRA's random init must not depend on what ran before
    model = _build_model(base, opts, adapter)
    checkpoints = Checkpoints(points, out, tok, with_moments=opts.save_moments)
    trainer = _Trainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        data_collator=_Collate(tok),
        callbacks=[checkpoints],
    )
    checkpoints.trainer = trainer
    trainer.remove_callback(transformers.PrinterCallback)  # raw dict prints; we log progress lines
    trainer.remove_callback(transformers.ProgressCallback)
    (log.info if args.process_index == 0 else log.debug)(
        "training on %d examples (%d skipped: longer than max_seq_len), %d steps of %d x %d x %d process(es), "
        "checkpoints at %s",
        len(rows),
        len(examples) - len(rows),
        total,
        opts.batch_size,
        opts.grad_accum,
        world,
        points,
    )
    return trainer, len(examples) - len(rows), points


def _arguments(out: Path, opts: TrainOptions, total: int) -> transformers.TrainingArguments:
    return transformers.TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=opts.batch_size,
        gradient_accumulation_steps=opts.grad_accum,
        max_steps=total,
        learning_rate=opts.learning_rate,
        lr_scheduler_type=opts.lr_scheduler,
        warmup_steps=int(opts.warmup_ratio * total),
        weight_decay=opts.weight_decay,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=opts.seed,
        data_seed=opts.seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=_cuda(),
        # LoRA and full fine-tuning give every trainable weight a gradient: DDP need not search for unused ones.
        ddp_find_unused_parameters=False,
        # Why: without a GPU, processes started by a launcher form a process group only with use_cpu.
        **{"use_cpu": not _cuda(), **opts.extra_args},
    )


class _Collate:
    """DataCollatorForSeq2Seq, with each example's index passed along as `row` (recorded, not fed to the model)."""

    def __init__(self, tok: PreTrainedTokenizerBase):
        self.inner = transformers.DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=IGNORE)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner([{k: v for k, v in f.items() if k != "row"} for f in features])
        batch["row"] = torch.tensor([f["row"] for f in features])
        return batch


class _Trainer(transformers.Trainer):
    """Trainer that records which examples each of this rank's micro-batches held (`seen`) and asks
    for logits only where the loss reads them (`response_logits_only`, when the model supports it)."""

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self.seen: list[list[int]] = []
        self.trim = keeps_logits_by_mask(self.model)

    def training_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kw: Any) -> torch.Tensor:
        self.seen.append(inputs.pop("row").tolist())
        return super().training_step(model, inputs, *args, **kw)

    def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kw: Any) -> Any:
        return super().compute_loss(model, response_logits_only(inputs) if self.trim else inputs, *args, **kw)


def response_logits_only(inputs: dict[str, Any]) -> dict[str, Any]:
    """The batch with logits asked for only at positions that predict a response token.

    Why: the loss reads those alone, yet a plain forward projects every position onto the vocabulary
    (49k rows for SmolLM2) and back-propagates through all of them, the prompt included (about half of
    a synthesis sample). The loss and its gradients are the same; `shift_labels` are the kept targets."""
    shifted = torch.nn.functional.pad(inputs["labels"], (0, 1), value=IGNORE)[:, 1:]
    keep = shifted != IGNORE
    return {**inputs, "logits_to_keep": keep, "shift_labels": shifted[keep]}


def keeps_logits_by_mask(model: Any) -> bool:
    """Whether the (PEFT-wrapped) causal LM takes a boolean `logits_to_keep` mask and `shift_labels`."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    loss = getattr(base, "loss_function", None)
    return (
        hasattr(transformers.modeling_utils, "slice_logits_to_keep")  # where a boolean mask is understood
        and "logits_to_keep" in inspect.signature(base.forward).parameters
        and loss is not None
        and "shift_labels" in inspect.signature(loss).parameters
    )


def _cuda() -> bool:

    return torch.cuda.is_available()


# ----------------------------------------------------------------------------- launcher / CLI
def _launch(
    plan: LaunchPlan,
    examples: list[Example],
    base: str,
    out: Path,
    opts: TrainOptions,
    key: str,
    adapter: str | None,
) -> TrainResult:
    """Run `_train` under the launcher (accelerate, torchrun, deepspeed); read its result when it returns."""

    out.mkdir(parents=True, exist_ok=True)
    job = out / "job.json"
    write_json(
        job,
        {
            "examples": [[list(map(list, e.messages)), e.response] for e in examples],
            "base": base,
            "opts": opts.model_copy(update={"launcher": None}).model_dump(mode="json"),
            "key": key,
            "adapter": adapter,
            "out": str(out),
        },
    )
    run_launched(plan, "scoder_lib.method.train", "--job", str(job))
    done = out / DONE
    if not done.exists() or read_json(done)["key"] != key:
        raise LaunchError(f"training under {plan.launcher!r} exited 0 but did not mark {out} done")
    result = _result(out)
    if plan.processes is not None and result.world_size != plan.processes:
        done.unlink()  # not the run that was asked for: never reuse it
        raise LaunchError(
            f"train.launcher {plan.launcher!r} asks for {plan.processes} processes, but training ran as "
            f"{result.world_size}: not the data-parallel run configured"
        )
    return result


def main(argv: list[str] | None = None) -> int:

    setup_logging()
    ap = argparse.ArgumentParser(prog="python -m scoder_lib.method.train", description="one SFT job (see sft)")
    ap.add_argument("--job", required=True, help="job.json written by sft() when train.launcher is set")
    job = read_json(ap.parse_args(argv).job)
    examples = [Example(tuple(tuple(m) for m in msgs), resp) for msgs, resp in job["examples"]]
    opts = TrainOptions.model_validate(job["opts"])
    _train(examples, job["base"], Path(job["out"]), opts, job["key"], job["adapter"])
    leave_process_group()  # the Trainer is out of scope: end the group before the interpreter exits
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
