"""Which synthesizer each stage trained, which one the next starts from, and which snippets were used."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

from transformers import PreTrainedTokenizerBase

from scoder_lib.core.config import TrainOptions
from scoder_lib.core.io import read_json, read_jsonl, write_json
from scoder_lib.core.logs import get_logger
from scoder_lib.core.records import Candidate, Record, read_records
from scoder_lib.core.run import Run
from scoder_lib.llm.models import prepare, synthesizer_tokenizer
from scoder_lib.method import teacher
from scoder_lib.method.seed import to_example
from scoder_lib.method.synthesis import messages
from scoder_lib.method.train import Example, TrainResult, encode, sft

SYNTH = "synthesizer.json"
USED = "snippets_used.jsonl"
KEPT = "kept.jsonl"  # 04's kept candidates: what synthesizer t trained on
log = get_logger(__name__)


@dataclass
class Synthesizer(Record):
    """A trained synthesizer: its M checkpoints (oldest first), the final one, and how it came to be."""

    checkpoints: list[str]
    final: str
    steps: int
    note: str

    def sampling_checkpoints(self, m: int | None) -> list[str]:
        """The checkpoints multi-checkpoint sampling uses: the last M (None: all)."""
        return self.checkpoints[-(m or len(self.checkpoints)) :]


def save_synthesizer(folder: Path, result: TrainResult, note: str) -> Synthesizer:
    """Record a trained synthesizer in `folder/synthesizer.json`."""
    synth = Synthesizer([str(p) for p in result.checkpoints], str(result.final), result.steps, note)
    write_json(folder / SYNTH, synth.to_json())
    return synth


def carry_over(folder: Path, previous: Synthesizer, iteration: int) -> Synthesizer:
    """Nothing survived an iteration's filters: synthesizer t is synthesizer t-1, loudly recorded."""
    log.warning("no candidate survived: synthesizer %d = synthesizer %d", iteration, iteration - 1)
    synth = replace(previous, note=f"iteration {iteration}: carried over (no samples)")
    write_json(folder / SYNTH, synth.to_json())
    return synth


def train_next(
    run: Run, folder: Path, examples: list[Example], previous: Synthesizer, iteration: int, note: str
) -> tuple[Synthesizer, TrainResult | None]:
    """Train the next synthesizer on `examples` into `folder` (from the previous adapter or the base, as
    `influence.train_from` says); with no examples, carry the previous one over (recorded as such)."""
    if not examples:
        return carry_over(folder, previous, iteration), None
    opts = run.cfg.influence
    base = prepare(run.cfg.synthesizer, run.cache_dir)
    adapter = previous.final if opts.train_from == "previous" else None
    trained = sft(examples, base.path, folder / "synthesizer", opts.train, base.fingerprint, adapter=adapter)
    return save_synthesizer(folder, trained, note), trained


def load_synthesizer(folder: Path) -> Synthesizer:
    return Synthesizer.from_json(read_json(folder / SYNTH))


def synthesizer_before(run: Run, iteration: int) -> Synthesizer:
    """The synthesizer iteration t starts from: 02's enhanced one for t=1, else iteration t-1's."""
    return load_synthesizer(
        run.stage_dir("02_seed") if iteration <= 1 else run.stage_dir("04_influence", iteration - 1)
    )


def snippets_used_before(run: Run, iteration: int) -> set[str]:
    """Snippet keys consumed by iterations 1..t-1 (each iteration draws fresh ones)."""
    keys: set[str] = set()
    for t in range(1, iteration):
        path = run.stage_dir("03_sample_score", t) / USED
        keys |= {r["key"] for r in read_jsonl(path)}
    return keys


def candidate_example(c: Candidate, version: str) -> Example:
    """Self-distillation trains on exactly what the synthesizer wrote, for the prompt it answered."""
    return Example.of(messages(c.snippet, version), c.raw)


class Pool(NamedTuple):
    fit: list[Candidate]  # candidates synthesizer training would use whole
    too_long: list[Candidate]  # left out: training would drop them (or could not fit even their prompt)


def fits_training(tok: PreTrainedTokenizerBase, examples: list[Example], opts: TrainOptions) -> list[bool]:
    """Whether training (`opts.max_seq_len` under `opts.long_examples`) uses each example: the same
    `encode` as `sft`, so what is ranked or drawn here is exactly what trains."""
    truncate = opts.long_examples == "truncate"
    return [encode(tok, e, opts.max_seq_len, truncate) is not None for e in examples]


def trainable(cands: list[Candidate], tok: PreTrainedTokenizerBase, version: str, opts: TrainOptions) -> Pool:
    """Split candidates into those training would use and those too long for it.

    Why: a too-long candidate would get influence 0 (no gradient; ranked first when every real score is
    negative) or be truncated by influence yet dropped by training, so the method and the control would
    train on different counts. Both arms draw from the `fit` part only.
    """
    ok = fits_training(tok, [candidate_example(c, version) for c in cands], opts)
    pool = Pool([c for c, f in zip(cands, ok) if f], [c for c, f in zip(cands, ok) if not f])
    if pool.too_long:
        log.warning(
            "%d of %d candidates too long for training (max_seq_len=%d, long_examples=%s): left out",
            len(pool.too_long),
            len(cands),
            opts.max_seq_len,
            opts.long_examples,
        )
    return pool


def method_pool(run: Run, iteration: int, tok: PreTrainedTokenizerBase) -> Pool:
    """What stage 04 ranks by influence: 03's selection, less what training would not use whole."""
    cands = read_records(run.upstream("03_sample_score", iteration) / "selected.jsonl", Candidate)
    return trainable(cands, tok, run.cfg.seed_stage.prompt_version, run.cfg.influence.train)


def control_pool(run: Run, iteration: int, tok: PreTrainedTokenizerBase) -> Pool:
    """What the same-size control draws from: 03's eligible candidates, less what training would not use whole."""
    cands = read_records(run.upstream("03_sample_score", iteration) / "candidates.jsonl", Candidate)
    return trainable([c for c in cands if c.eligible], tok, run.cfg.seed_stage.prompt_version, run.cfg.influence.train)


class InfluenceInputs(NamedTuple):
    candidates: list[Candidate]  # what 03 selected that training would use whole (`method_pool`)
    checkpoints: list[Path]  # every checkpoint of the synthesizer iteration t starts from
    candidate_examples: list[Example]  # each candidate as the example it would train on
    targets: list[Example]  # every teacher training sample (influence draws its subset)


def influence_inputs(run: Run, iteration: int, cands: list[Candidate] | None = None) -> InfluenceInputs:
    """What stage 04 of iteration t scores (read by the notebook and by the ranking check alike);
    `cands`: the `method_pool(...).fit` already computed (None: computed here)."""
    cfg = run.cfg
    version = cfg.seed_stage.prompt_version
    if cands is None:
        cands = method_pool(run, iteration, synthesizer_tokenizer(run.cfg)).fit
    # LESS sums over every checkpoint of the previous synthesizer: `iterate.checkpoints` (M) limits only
    # sampling, so the M=1 ablation removes multi-checkpoint sampling and nothing else.
    ckpts = [Path(p) for p in synthesizer_before(run, iteration).checkpoints]
    return InfluenceInputs(
        cands,
        ckpts,
        [candidate_example(c, version) for c in cands],
        [to_example(r, version) for r in teacher.load(run).train],
    )


def training_set(run: Run, iteration: int, kept: list[Candidate]) -> list[Example]:
    """What synthesizer t trains on (`influence.train_data`): this iteration's kept samples; plus the
    teacher's training samples; or every iteration's kept samples so far (oldest first)."""
    cfg = run.cfg
    version, mode = cfg.seed_stage.prompt_version, cfg.influence.train_data
    earlier: list[Candidate] = []
    if mode == "accumulated":
        for t in range(1, iteration):
            earlier += read_records(run.stage_dir("04_influence", t) / KEPT, Candidate)
    examples = [candidate_example(c, version) for c in earlier + kept]
    if mode == "kept+seed":
        examples += [to_example(r, version) for r in teacher.load(run).train]
    return examples


def final_synthesizer(run: Run) -> Synthesizer:
    """The synthesizer a run ends with (after its last iteration); used by ablation arms."""
    return synthesizer_before(run, run.cfg.iterate.iterations + 1)
