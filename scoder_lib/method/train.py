"""Supervised fine-tuning on chat (prompt, response) pairs with the Hugging Face Trainer.

Loss on response tokens only; LoRA (peft) or full fine-tuning; M checkpoints evenly spaced over
training, each with the Adam moments of every trainable parameter keyed by name and its average
learning rate (what optimizer-aware influence needs). Built on Trainer, so it scales without code
changes: set `train.launcher` (e.g. "accelerate launch --num_processes 8 --config_file ds.yaml")
and `sft` runs this module's CLI under that launcher, with `train.extra_args` going to
TrainingArguments (deepspeed, fsdp, bf16 ...):

    accelerate launch ... -m scoder_lib.method.train --job JOB.json
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase, TrainerCallback

from scoder_lib.core.config import TrainOptions
from scoder_lib.core.hashing import fingerprint
from scoder_lib.core.io import read_json, write_json
from scoder_lib.core.logs import Progress, get_logger, setup_logging

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


def save_points(total_steps: int, m: int) -> list[int]:
    """M checkpoint steps spread evenly over training, the last at the final step."""
    m = max(1, min(m, total_steps))
    return sorted({max(1, round(k * total_steps / m)) for k in range(1, m + 1)})


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

    key = fingerprint(
        {
            "base": base_fingerprint,
            "adapter": adapter and str(adapter),
            "opts": opts.model_dump(exclude={"launcher"}),
            "data": fingerprint([[list(e.messages), e.response] for e in examples]),
        }
    )
    done = out / DONE
    if done.exists() and read_json(done)["key"] == key:
        log.info("training in %s already done: reusing", out)
        return _result(out)
    if out.exists() and done.exists():
        shutil.rmtree(out)  # a different run trained here before
    if opts.launcher:
        return _launch(examples, base, out, opts, base_fingerprint, adapter)
    start = time.monotonic()
    trainer, n_skipped, points = _trainer(examples, base, out, opts, adapter)
    resume = _latest_hf_checkpoint(out)
    if resume:
        log.info("resuming interrupted training from %s", resume.name)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    for hf in out.glob("checkpoint-*"):
        shutil.rmtree(hf)  # resume state; our ckpt-* folders keep what later stages need
    losses = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    if not trainer.is_world_process_zero():
        return _result(out)
    write_json(
        done,
        {
            "key": key,
            "steps": trainer.state.global_step,
            "save_points": points,
            "losses": losses,
            "skipped": n_skipped,
            "wall_s": round(time.monotonic() - start, 1),
        },
    )
    return _result(out)


def _result(out: Path) -> TrainResult:
    meta = read_json(out / DONE)
    ckpts = [out / f"ckpt-{s}" for s in meta["save_points"]]
    return TrainResult(out, ckpts, [tuple(x) for x in meta["losses"]], meta["steps"], meta["skipped"], meta["wall_s"])


def _latest_hf_checkpoint(out: Path) -> Path | None:
    found = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return found[-1] if found else None


def _trainer(examples: list[Example], base: str, out: Path, opts: TrainOptions, adapter: str | None):

    tok = transformers.AutoTokenizer.from_pretrained(base)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    truncate = opts.long_examples == "truncate"
    rows = [r for r in (encode(tok, e, opts.max_seq_len, truncate) for e in examples) if r is not None]
    if not rows:
        raise ValueError(f"no training example fits max_seq_len={opts.max_seq_len}")
    per_step = opts.batch_size * opts.grad_accum
    total = opts.max_steps or max(1, math.ceil(len(rows) / per_step * opts.epochs))
    points = save_points(total, opts.num_checkpoints)
    if len(points) < opts.num_checkpoints:  # the next stage samples from fewer checkpoints (M) than asked
        log.warning(
            "%d training steps: saving %d checkpoint(s), not the %d asked (num_checkpoints)",
            total,
            len(points),
            opts.num_checkpoints,
        )
    args = transformers.TrainingArguments(
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
        **opts.extra_args,
    )
    transformers.set_seed(opts.seed)  # LoRA's random init must not depend on what ran before
    model = _build_model(base, opts, adapter)
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        data_collator=transformers.DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=IGNORE),
        callbacks=[_Checkpoints(points, out, tok)],
    )
    trainer.remove_callback(transformers.PrinterCallback)  # raw dict prints; we log progress lines
    trainer.remove_callback(transformers.ProgressCallback)
    log.info(
        "training on %d examples (%d skipped: longer than max_seq_len), %d steps, checkpoints at %s",
        len(rows),
        len(examples) - len(rows),
        total,
        points,
    )
    return trainer, len(examples) - len(rows), points


class _Checkpoints(TrainerCallback):
    """Trainer callback: save M checkpoints with Adam moments keyed by parameter name."""

    def __init__(self, points: list[int], out: Path, tok: PreTrainedTokenizerBase):
        self.points, self.out, self.tok = sorted(points), out, tok
        self.progress: Progress | None = None

    def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
        self.progress = Progress(state.max_steps - state.global_step, "training", unit="steps", every_s=30)

    def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
        if logs and "loss" in logs and self.progress is not None:
            self.progress.desc = f"training (loss {float(logs['loss']):.3f})"

    def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
        if self.progress is not None:
            self.progress.update()
        if state.global_step in self.points:
            control.should_save = True  # also writes HF's resumable checkpoint-<step>
        return control

    def on_save(self, args, state, control, model=None, optimizer=None, **kw):  # noqa: ANN001
        if not state.is_world_process_zero:
            return control
        step = state.global_step
        folder = self.out / f"ckpt-{step}"
        model.save_pretrained(folder)
        self.tok.save_pretrained(folder)
        save_moments(model, optimizer, folder / "moments.safetensors")
        # LESS weighs each checkpoint by the mean learning rate since the previous one; read from
        # the log history (restored on resume), not from callback state (lost on interruption).
        prev = max([p for p in self.points if p < step], default=0)
        window = [
            h["learning_rate"] for h in state.log_history if "learning_rate" in h and prev < h["step"] <= step
        ] or [0.0]
        write_json(
            folder / "meta.json",
            {
                "step": step,
                "avg_lr": sum(window) / len(window),
                "betas": list(optimizer.param_groups[0]["betas"]),
                "eps": optimizer.param_groups[0]["eps"],
            },
        )
        return control


def save_moments(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """exp_avg.<name> / exp_avg_sq.<name> for every trainable parameter (and the Adam step).

    Plain torch optimizers only: under DeepSpeed ZeRO the states are sharded and would need
    deepspeed.utils.safe_get_full_optimizer_state first.
    """

    tensors = {}
    for name, p in model.named_parameters():
        state = optimizer.state.get(p, {})
        if p.requires_grad and "exp_avg" in state:
            tensors[f"exp_avg.{name}"] = state["exp_avg"].detach().cpu().contiguous()
            tensors[f"exp_avg_sq.{name}"] = state["exp_avg_sq"].detach().cpu().contiguous()
            tensors.setdefault("step", torch.tensor(float(state.get("step", 0))))
    save_file(tensors, str(path))


def load_moments(folder: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(exp_avg by name, exp_avg_sq by name, meta) of a checkpoint."""

    t = load_file(str(folder / "moments.safetensors"))
    m = {k[len("exp_avg.") :]: v for k, v in t.items() if k.startswith("exp_avg.")}
    v = {k[len("exp_avg_sq.") :]: v for k, v in t.items() if k.startswith("exp_avg_sq.")}
    meta = json.loads((folder / "meta.json").read_text())
    meta["adam_step"] = float(t["step"]) if "step" in t else meta["step"]
    return m, v, meta


def _cuda() -> bool:

    return torch.cuda.is_available()


# ----------------------------------------------------------------------------- launcher / CLI
def _launch(
    examples: list[Example], base: str, out: Path, opts: TrainOptions, base_fingerprint: str, adapter: str | None
) -> TrainResult:
    """Run `sft` in a subprocess under `opts.launcher` (accelerate, torchrun, deepspeed)."""

    out.mkdir(parents=True, exist_ok=True)
    job = out / "job.json"
    write_json(
        job,
        {
            "examples": [[list(map(list, e.messages)), e.response] for e in examples],
            "base": base,
            "opts": opts.model_copy(update={"launcher": None}).model_dump(mode="json"),
            "base_fingerprint": base_fingerprint,
            "adapter": adapter,
            "out": str(out),
        },
    )
    cmd = [*shlex.split(opts.launcher or ""), "-m", "scoder_lib.method.train", "--job", str(job)]
    if cmd[0] in ("python", "python3"):
        cmd[0] = sys.executable
    log.info("training under a launcher: %s", " ".join(cmd))
    subprocess.run(cmd, check=True)
    return _result(out)


def main(argv: list[str] | None = None) -> int:

    setup_logging()
    ap = argparse.ArgumentParser(prog="python -m scoder_lib.method.train", description="one SFT job (see sft)")
    ap.add_argument("--job", required=True, help="job.json written by sft() when train.launcher is set")
    job = read_json(ap.parse_args(argv).job)
    examples = [Example(tuple(tuple(m) for m in msgs), resp) for msgs, resp in job["examples"]]
    sft(
        examples,
        job["base"],
        Path(job["out"]),
        TrainOptions.model_validate(job["opts"]),
        job["base_fingerprint"],
        job["adapter"],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
