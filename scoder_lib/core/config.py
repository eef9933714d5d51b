"""The one config object: frozen, typed sections, one per stage (loaded from YAML by `core.params`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import model_validator

from scoder_lib.core import reads
from scoder_lib.core.engine_options import LlamaCppOptions, OpenAIOptions, VllmOptions
from scoder_lib.core.hashing import fingerprint
from scoder_lib.core.section import ConfigError as ConfigError  # re-exported: errors are raised as config's
from scoder_lib.core.section import Section

REPO_ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- models
class ModelSpec(Section):
    """Which model and how to run it. `name`: smollm2-135m-instruct | micro | hub id | folder | .gguf file."""

    name: str
    backend: Literal["transformers", "vllm", "openai", "llamacpp"] = "transformers"
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    revision: str | None = None
    gguf_file: str | None = None
    batch_size: int = 16
    # Run the backend in another interpreter (a worker process), e.g. ".venv-vllm/bin/python" where
    # vLLM's CPU build lives in a venv of its own; None: in this process.
    python: str | None = None
    vllm: VllmOptions = VllmOptions()
    openai: OpenAIOptions = OpenAIOptions()
    llamacpp: LlamaCppOptions = LlamaCppOptions()


class Sampling(Section):
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    n: int = 1
    seed: int = 0


# ----------------------------------------------------------------------------- training
class LoraOptions(Section):
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    # Adapt only the last `last_layers` decoder layers (None: all). Backward then stops early,
    # which on a CPU roughly halves step time; LESS adapts all layers.
    last_layers: int | None = None


class TrainOptions(Section):
    method: Literal["lora", "full"] = "lora"
    lora: LoraOptions = LoraOptions()
    epochs: float = 1.0
    max_steps: int | None = None
    learning_rate: float = 2e-4
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    # Per process: one optimizer step sees batch_size x grad_accum x processes examples (the global
    # batch); 2 processes x 2 train as 1 process x 4 does, on the same batches in the same order.
    batch_size: int = 4
    grad_accum: int = 1
    max_seq_len: int = 1024
    # Examples longer than max_seq_len: drop them (default: a truncated response teaches the model
    # to stop mid-sample), or truncate the response.
    long_examples: Literal["drop", "truncate"] = "drop"
    # M: checkpoints saved evenly over training, each with its Adam moments (for influence).
    num_checkpoints: int = 2
    # Save the Adam moments with each checkpoint: influence needs them for synthesizers; students do not
    # (for a full fine-tune they are twice the weights).
    save_moments: bool = True
    seed: int = 0
    # Passed to TrainingArguments as-is for scale-out (deepspeed config path, fsdp, bf16 ...).
    extra_args: dict[str, Any] = {}
    # Run training in a subprocess under this launcher, e.g. "accelerate launch --num_processes 8
    # --config_file configs/zero2.yaml": the notebook then drives a multi-GPU (or multi-node) job.
    # accelerate, torchrun and deepspeed run from this interpreter (no PATH look-up); on CPUs,
    # "accelerate launch --num_processes 2 --cpu" is DDP over gloo (see scoder_lib.method.launch).
    launcher: str | None = None


# ----------------------------------------------------------------------------- stages
class BenchmarksOptions(Section):
    folder: str = ".data/benchmarks"
    # Folders searched to fill `folder` before any download (checksums verified).
    fill_from: list[str] = ["../shared/benchmarks"]
    download: bool = True
    # LiveCodeBench's release JSONL files (none ship): here, where every stage that reads them hashes it.
    livecodebench_folder: str | None = None


class SourceOptions(Section):
    kind: Literal["stdlib", "folder", "files", "hf_dataset"]
    path: str | None = None  # folder, or a .jsonl/.parquet file or glob for kind=files
    dataset: str | None = None  # hub id for kind=hf_dataset
    split: str = "train"
    data_dir: str | None = None
    column: str = "content"
    max_files: int | None = None

    @model_validator(mode="after")
    def _needs_location(self) -> SourceOptions:
        if self.kind in ("folder", "files") and not self.path:
            raise ValueError(f"source kind '{self.kind}' needs 'path'")
        if self.kind == "hf_dataset" and not self.dataset:
            raise ValueError("source kind 'hf_dataset' needs 'dataset'")
        return self


class ExtractOptions(Section):
    kinds: list[Literal["function", "method", "class"]] = ["function", "method", "class"]
    min_lines: int = 3
    max_lines: int = 40
    min_chars: int = 60
    max_chars: int = 2000
    max_line_length: int = 120
    # Share of characters that must be ASCII letters, digits, whitespace or punctuation.
    min_ascii_fraction: float = 0.98
    min_alpha_fraction: float = 0.35
    skip_path_patterns: list[str] = [
        "test",
        "tests",
        "testing",
        "idlelib",
        "site-packages/pip",
        "_vendor",
        "vendored",
        "lib2to3",
        "encodings",
        "__phello__",
    ]
    skip_generated_markers: list[str] = ["generated by", "do not edit", "autogenerated", "auto-generated"]


class DedupOptions(Section):
    num_perm: int = 128
    threshold: float = 0.7
    shingle_size: int = 5  # tokens per shingle
    # Snippets with fewer shingles than this are matched exactly on their token sequence only.
    min_shingles: int = 10
    # LSH band/row choice: weight of false negatives vs false positives (datasketch default 0.5).
    recall_weight: float = 0.8
    seed: int = 1


class DecontamOptions(Section):
    # livecodebench: only where its release files are configured (benchmarks.livecodebench_folder)
    benchmarks: list[Literal["humaneval", "humaneval+", "mbpp+", "bigcodebench", "livecodebench"]] = [
        "humaneval",
        "humaneval+",
        "mbpp+",
        "bigcodebench",
    ]
    # Substring stage: normalised benchmark strings at least this long are searched in each snippet.
    min_substring_chars: int = 40
    ngram: int = 10
    # A snippet is contaminated when this share of its n-grams occurs in one benchmark item.
    ngram_overlap: float = 0.5


class PreprocessOptions(Section):
    sources: list[SourceOptions] = [SourceOptions(kind="stdlib")]
    extract: ExtractOptions = ExtractOptions()
    dedup: DedupOptions = DedupOptions()
    decontam: DecontamOptions = DecontamOptions()
    max_snippets: int | None = None
    seed: int = 0


class ExecutionOptions(Section):
    workers: int = 2
    timeout_s: float = 10.0
    memory_mb: int = 1024
    # auto: bwrap, else the landlock wall, else rlimits (no wall, with a warning); strict: the same but
    # refuses to run untrusted code without a complete wall. See scoder_lib/sandbox/isolation.py.
    isolation: Literal["auto", "strict", "bwrap", "landlock", "rlimits"] = "auto"


class TeacherDataset(Section):
    """A ready-made teacher-written instruction set (e.g. an OSS-Instruct-style 75K set) for the teacher arm.

    One of `path` (a .jsonl or .parquet file) or `dataset` (a `datasets` hub id, for users who have it).
    Its rows have no tests: they are deduplicated and decontaminated, never executed.
    """

    path: str | None = None
    dataset: str | None = None
    split: str = "train"
    problem_field: str = "problem"
    solution_field: str = "solution"

    @model_validator(mode="after")
    def _one_source(self) -> TeacherDataset:
        if (self.path is None) == (self.dataset is None):
            raise ValueError("a teacher dataset needs exactly one of 'path' or 'dataset'")
        return self


class TeacherOptions(Section):
    # file: the committed seed set; openai: extend it through an OpenAI-compatible endpoint (n_new samples).
    backend: Literal["file", "openai"] = "file"
    seed_file: str = "data/seed/seed_v1.jsonl"
    # GPT-4o list prices (USD per 1M tokens, 2025): they also price the committed seed set in 05's cost table.
    model: ModelSpec = ModelSpec(
        name="gpt-4o", backend="openai", openai=OpenAIOptions(price_per_1m_input_usd=2.5, price_per_1m_output_usd=10.0)
    )
    sampling: Sampling = Sampling(temperature=0.0, max_new_tokens=1024)
    n_new: int = 0  # extra snippets to send to the teacher when backend=openai
    dataset: TeacherDataset | None = None  # more teacher data, for the teacher arm only


class SeedOptions(Section):
    teacher: TeacherOptions = TeacherOptions()
    prompt_version: str = "v1"
    max_train_samples: int | None = None
    # The held-out yardstick: this many held-out snippets, `compare_sampling.n` samples each, for every
    # synthesizer (base, enhanced, each iteration's, the controls).
    heldout_compare: int = 30
    compare_sampling: Sampling = Sampling(temperature=0.0, max_new_tokens=512)
    train: TrainOptions = TrainOptions()


class AspectWeights(Section):
    # fit: teacher samples vs the iteration's eligible candidates; fixed: `fixed`; none: no scoring (the
    # ablation: a seeded random eligible candidate per snippet, then the same keep fraction)
    mode: Literal["fit", "fixed", "none"] = "fit"
    fixed: dict[str, float] = {}
    bootstrap: int = 200
    l2: float = 1.0
    steps: int = 3000  # gradient steps of each fit (the point estimate and every bootstrap refit)
    min_sd: float = 0.05  # aspects whose ratings vary less (sd, 0-9 scale) carry no signal: weight 0
    cv_folds: int = 5  # the out-of-sample AUC beside the in-sample one
    cv_guard: bool = True  # use the fit only if its out-of-sample AUC beats equal weights'; else equal weights


class IterateOptions(Section):
    iterations: int = 2
    snippets_per_iteration: int = 64  # K
    checkpoints: int | None = None  # M; None = all saved checkpoints
    samples_per_checkpoint: int = 2  # N
    sampling: Sampling = Sampling(temperature=0.8, top_p=0.95, max_new_tokens=512)
    scorer: ModelSpec | None = None  # None = the base synthesizer
    aspects: list[str] = ["clarity", "consistency", "correctness", "relevance", "difficulty"]
    weights: AspectWeights = AspectWeights()
    fit_snippets: int = 24  # teacher training samples rated as the weight fit's positives (a seeded draw)
    # Candidates must reach this verdict to be kept: passed (solution passes its own tests),
    # parsed (sections found), any (smoke profile: random-init models never parse).
    min_status: Literal["passed", "parsed", "any"] = "passed"
    keep_top_fraction: float = 0.5


class InfluenceOptions(Section):
    # influence: keep the most influential; random / score: the ablations, the same count kept at random
    # (seeded) or by aspect score alone.
    select: Literal["influence", "random", "score"] = "influence"
    # sjlt: sparse JL (one hashed +-1 a parameter; cost ~P a sample, same bits on every device);
    # rademacher: LESS's dense matrix (cost ~P x D); none: exact cosines (n x P features: tests only)
    projection: Literal["sjlt", "rademacher", "none"] = "sjlt"
    projection_dim: int = 8192
    projection_seed: int = 0
    aggregate: Literal["mean", "max"] = "mean"
    max_target_samples: int | None = None  # teacher training samples used as the target set
    batch_size: int = 4
    keep_fraction: float = 0.5
    train_from: Literal["previous", "base"] = "previous"
    # What synthesizer t trains on: this iteration's kept samples; plus the teacher's training samples;
    # or every iteration's kept samples so far.
    train_data: Literal["kept", "kept+seed", "accumulated"] = "kept"
    # Iterations whose next synthesizer also gets a same-size control: trained identically on a seeded
    # random selection of the same number of eligible candidates, measured on the same yardstick.
    control: list[int] = []
    train: TrainOptions = TrainOptions()


class ArmOptions(Section):
    """A student trained on one data source. `run`: the final synthesizer of another run (ablations)."""

    name: str
    data: Literal["teacher", "base", "enhanced", "method", "run"]
    run: str | None = None  # data 'run': the run whose final synthesizer feeds this arm ...
    profile: str | None = None  # ... and the profile that run is made with (an ablation's params)
    n: int | None = None  # samples asked for this arm (None: final.n_train)
    enabled: bool = True

    @model_validator(mode="after")
    def _run_named(self) -> ArmOptions:
        if (self.data == "run") != (self.run is not None) or (self.data == "run") != (self.profile is not None):
            raise ValueError("an arm with data 'run' needs 'run' and 'profile' (and only such an arm has them)")
        return self


class FinalOptions(Section):
    snippets: int = 200
    sampling: Sampling = Sampling(temperature=0.7, top_p=0.95, max_new_tokens=512)
    min_status: Literal["passed", "parsed"] = "passed"
    dedup_threshold: float = 0.7
    n_train: int | None = None  # samples per arm unless the arm says `n` (None: all it has)
    # Cut every arm to the smallest one (off: each arm keeps its asked size, as the paper compares 60K to 75K).
    equalize: bool = False
    # Share of an arm's asked size that may be missing before stage 05 stops with a shortfall error.
    shortfall_tolerance: float = 0.0
    # evalplus: students train on EvalPlus's instruction prompt and response prefix, the format they are
    # evaluated with; system: a system prompt + the bare problem (evaluation keeps evaluate.prompt_style).
    student_format: Literal["evalplus", "system"] = "evalplus"
    student: ModelSpec = ModelSpec(name="smollm2-135m-instruct")
    train: TrainOptions = TrainOptions()
    arms: list[ArmOptions] = [ArmOptions(name="scoder", data="method"), ArmOptions(name="teacher_only", data="teacher")]


class EvaluateOptions(Section):
    # chat: EvalPlus's instruction prompt with a response prefix (instruct models); completion: base models
    prompt_style: Literal["chat", "completion"] = "chat"
    evaluate_base_student: bool = True
    benchmarks: list[Literal["humaneval", "humaneval+", "mbpp", "mbpp+", "bigcodebench", "livecodebench"]] = [
        "humaneval",
        "humaneval+",
        "mbpp",
        "mbpp+",
    ]
    max_tasks: int | None = None  # first N tasks of each benchmark (None: all; for smoke tests)
    # A seeded random sample of N tasks for the named benchmarks (e.g. {mbpp: 100}); others: all tasks.
    task_sample: dict[str, int] = {}
    # The in-distribution yardstick: students answer every held-out teacher problem, judged by the
    # teacher's own asserts, each on its own (solved whole: `heldout`; share passed: `heldout-tests`).
    heldout_problems: bool = False
    sampling: Sampling = Sampling(temperature=0.0, max_new_tokens=512)
    k: list[int] = [1]


class Config(Section):
    profile: str
    description: str = ""
    inherit: str | None = None  # another profile whose values this one overrides (deep merge)
    seed: int = 0
    cache_dir: str = ".cache/scoder"
    synthesizer: ModelSpec
    benchmarks: BenchmarksOptions = BenchmarksOptions()
    preprocess: PreprocessOptions = PreprocessOptions()
    execution: ExecutionOptions = ExecutionOptions()
    seed_stage: SeedOptions = SeedOptions()
    iterate: IterateOptions = IterateOptions()
    influence: InfluenceOptions = InfluenceOptions()
    final: FinalOptions = FinalOptions()
    evaluate: EvaluateOptions = EvaluateOptions()

    def __getattribute__(self, name: str) -> Any:
        # Why: a stage must read only the sections its settings hash covers (`core.reads` notes them).
        if reads.RECORDING:
            reads.note(self, name)
        return super().__getattribute__(name)

    def section_hash(self, names: list[str]) -> str:
        """Hash of the named top-level sections: what a stage's outputs depend on."""
        data = {n: self.model_dump(mode="json")[n] for n in sorted(names)}
        return fingerprint(data)

    def resolve(self, path: str) -> Path:
        """A params path, relative paths taken from the repository root."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else REPO_ROOT / p
