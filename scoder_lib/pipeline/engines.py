"""What ran each stage's models and training: backend, interpreter, launcher (the index's "ran with").

Read from the params the stage ran with (the same `Config` its notebook used), written into the stage's
success marker by `Stage.finish` and shown per stage on `reports/index.html` and in the study report.
Light imports only: `reports` and `study` read it without loading a model.
"""

from __future__ import annotations

from scoder_lib.core.config import Config, ModelSpec, TrainOptions


def describe_model(spec: ModelSpec, lora: bool = True) -> str:
    """e.g. "vllm smollm2-135m-instruct (worker .venv-vllm/bin/python; LoRA checkpoints as adapters)"."""
    notes = []
    if spec.python:
        notes.append(f"worker {spec.python}")
    elif spec.backend == "openai":
        notes.append(f"at {spec.openai.base_url}")
    elif spec.backend != "llamacpp":  # llama.cpp always decodes in worker processes: its layout says so
        notes.append("in-process")
    if spec.backend == "vllm" and lora:  # lora: the model it serves may be a LoRA checkpoint
        adapters = spec.vllm.lora_as_adapter
        notes.append("LoRA checkpoints as adapters of one engine" if adapters else "LoRA checkpoints merged")
    if spec.backend == "llamacpp":
        o = spec.llamacpp
        notes.append(f"{o.workers} worker processes x {o.threads} thread(s) x {o.slots} rows in flight")
        weights = "float16" if o.weights == "f16" else "GGUF as is"
        if lora:
            weights += ", LoRA checkpoints merged" if o.weights == "f16" else ", LoRA as adapters"
        notes.append(weights)
    return f"{spec.backend} {spec.name} ({'; '.join(notes)})"


def describe_training(opts: TrainOptions) -> str:
    """e.g. "lora under `accelerate launch --num_processes 2 --cpu`", or "full, in-process (no launcher)"."""
    how = f"under `{opts.launcher}`" if opts.launcher else "in-process (no launcher)"
    return f"{opts.method} {how}"


def stage_engines(cfg: Config, key: str) -> dict[str, str]:
    """Role -> what ran it, for one stage (empty: the stage runs no model and trains nothing)."""
    synth = describe_model(cfg.synthesizer)
    teacher = cfg.seed_stage.teacher
    if key == "02_seed":
        bought = teacher.backend == "openai" and teacher.n_new > 0
        out = {
            "teacher": f"{describe_model(teacher.model)}, {teacher.n_new} new samples bought"
            if bought
            else f"committed file {teacher.seed_file}",
            "synthesizer": synth,
            "training": describe_training(cfg.seed_stage.train),
        }
        return out
    if key == "03_sample_score":
        return {"synthesizer": synth, "scorer": describe_model(cfg.iterate.scorer or cfg.synthesizer)}
    if key == "04_influence":
        return {
            "synthesizer": synth,
            "gradient features": "torch, in-process",
            "training": describe_training(cfg.influence.train),
        }
    if key == "05_final":
        out = {"synthesizer": synth, "students": describe_training(cfg.final.train)}
        if teacher.dataset is not None:
            out["teacher dataset"] = teacher.dataset.path or teacher.dataset.dataset or "?"
        return out
    if key == "06_evaluate":
        return {"students": describe_model(cfg.final.student, lora=cfg.final.train.method == "lora")}
    return {}


def one_line(engines: dict[str, str]) -> str:
    return "; ".join(f"{role}: {what}" for role, what in engines.items())
