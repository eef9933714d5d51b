"""The M checkpoints of a training run: when they are taken and what each one holds.

Each `ckpt-<step>` folder holds the weights (or LoRA adapter) with the tokenizer, the Adam moments
of every trainable parameter (moments.safetensors) and meta.json (step, average learning rate
since the previous checkpoint, Adam's betas and eps): what optimizer-aware influence reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from transformers import PreTrainedTokenizerBase, TrainerCallback

from scoder_lib.core.io import write_json
from scoder_lib.core.logs import Progress
from scoder_lib.method.moments import full_moments, sharding


def save_points(total_steps: int, m: int) -> list[int]:
    """M checkpoint steps spread evenly over training, the last at the final step."""
    m = max(1, min(m, total_steps))
    return sorted({max(1, round(k * total_steps / m)) for k in range(1, m + 1)})


class Checkpoints(TrainerCallback):
    """Trainer callback: save M checkpoints (`ckpt-<step>`: weights, tokenizer, whole Adam moments, meta).

    Set `trainer` once the Trainer is built: sharded weights are gathered through its accelerator.
    """

    def __init__(self, points: list[int], out: Path, tok: PreTrainedTokenizerBase, with_moments: bool = True):
        self.points, self.out, self.tok = sorted(points), out, tok
        self.with_moments = with_moments
        self.progress: Progress | None = None
        self.trainer: Any = None

    def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
        if state.is_world_process_zero:  # one progress line per job, not per rank
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
        # Gathered on every rank where the state is sharded (collectives); written by rank 0 only.
        moments = full_moments(model, optimizer) if self.with_moments else {}
        weights = None
        if sharding(model, optimizer) != "none":
            weights = self.trainer.accelerator.get_state_dict(self.trainer.model_wrapped)
        if not state.is_world_process_zero:
            return control
        step = state.global_step
        folder = self.out / f"ckpt-{step}"
        self.trainer.accelerator.unwrap_model(model).save_pretrained(folder, state_dict=weights)
        self.tok.save_pretrained(folder)
        if self.with_moments:
            save_file(moments, str(folder / "moments.safetensors"))
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
