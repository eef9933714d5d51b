"""What every stage's count reads: the config, the guesses, the seed set's lengths and the models' sizes."""

from __future__ import annotations

from dataclasses import dataclass, field

from scoder_lib.core.config import Config, LoraOptions, ModelSpec, Sampling
from scoder_lib.pipeline.bill.assumptions import Assumptions
from scoder_lib.pipeline.bill.lengths import SeedLengths, seed_lengths
from scoder_lib.pipeline.bill.models import ModelSize, sizes_of
from scoder_lib.pipeline.bill.work import FLOAT32_BYTES, Work, generation


@dataclass
class Ctx:
    cfg: Config
    a: Assumptions
    seed: SeedLengths
    sizes: dict[str, ModelSize]
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, cfg: Config, a: Assumptions) -> Ctx:
        c = cls(cfg, a, seed_lengths(cfg), sizes_of(cfg))
        for role, size in c.sizes.items():
            if size.how == "unknown":
                c.warnings.append(f"{role} {size.name}: size unknown (not in the table, no config.json): not billed")
            elif size.how == "name":
                c.warnings.append(
                    f"{role} {size.name}: sized from its name ({size.params / 1e9:.3g}B); its LoRA width is "
                    "scaled from Qwen2.5-Coder-7B's shape (add it to bill/models.py KNOWN for exact counts)"
                )
        if cfg.synthesizer.backend == "openai":
            c.warnings.append("the synthesizer is served through an API: its dollars are not billed")
        return c

    # ------------------------------------------------------------------ models
    def small(self, role: str) -> bool:
        return self.sizes[role].params < self.a.small_model_params

    def rate(self, status: str, role: str = "synthesizer") -> float:
        """Share of a synthesizer's samples whose verdict reaches `status` (any | parsed | passed)."""
        if status == "any":
            return 1.0
        size = "small" if self.small(role) else "large"
        return float(getattr(self.a, f"{status}_rate_{size}"))

    def synth_tokens(self, max_new: int, trained: bool = True) -> float:
        """Generated tokens of one synthesis output: a synthesizer trained on teacher samples writes about
        as much as the teacher did (cut at max_new); a small base model fills a measured share of max_new."""
        if not trained and self.small("synthesizer"):
            return self.a.small_base_synth_fill * max_new
        return self.a.synth_len_factor * self.seed.response_upto(max_new)

    def synthesis(
        self, stage: str, item: str, spec: ModelSpec, prompts: int, sampling: Sampling, trained: bool = True
    ) -> Work:
        """`prompts` synthesis requests to a synthesizer (greedy requests decode once however many n)."""
        samples = 1 if sampling.temperature <= 0 else sampling.n
        lengths = (self.seed.mean("prompt"), self.synth_tokens(sampling.max_new_tokens, trained))
        return generation(stage, item, spec, self.sizes["synthesizer"], prompts, samples, lengths)

    def merges(self, spec: ModelSpec, count: int) -> tuple[int, float]:
        """(merges, bytes) of LoRA checkpoints vLLM serves as merged float32 copies (none as adapters)."""
        if spec.backend != "vllm" or spec.vllm.lora_as_adapter or count <= 0:
            return 0, 0.0
        return count, count * self.sizes["synthesizer"].params * FLOAT32_BYTES

    # ------------------------------------------------------------------ data
    @property
    def bought(self) -> int:
        """Teacher samples kept from the API purchase (valid ones only)."""
        t = self.cfg.seed_stage.teacher
        return round(t.n_new * self.a.teacher_valid_rate) if t.backend == "openai" else 0

    @property
    def teacher_train(self) -> int:
        """The run's teacher training samples: the committed training split plus bought ones."""
        return len(self.seed.train) + self.bought

    @property
    def heldout(self) -> int:
        return min(self.cfg.seed_stage.heldout_compare, len(self.seed.heldout))

    def synth_lora(self, iteration: int) -> LoraOptions:
        """The LoRA shape of the synthesizer iteration t samples from: training from the previous adapter
        keeps the seed stage's shape; training from the base uses influence.train's."""
        cfg = self.cfg
        if iteration <= 1 or cfg.influence.train_from == "previous":
            return cfg.seed_stage.train.lora
        return cfg.influence.train.lora
