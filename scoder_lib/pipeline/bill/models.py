"""Model sizes without loading a model: a table of known shapes, a prepared model's config.json, or the name.

From a shape come the parameter count, the LoRA parameter count (r, target modules, adapted layers)
and the FLOPs per token of a forward pass, a LoRA or full training step and a gradient pass.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from scoder_lib.core.config import Config, LoraOptions, ModelSpec, TrainOptions


@dataclass(frozen=True)
class Arch:
    """A decoder's shape (Llama/Qwen style: q/k/v/o attention, gate/up/down MLP)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer, by peft target name."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def layer_params(self) -> int:
        return sum(a * b for a, b in self.module_shapes().values())

    @property
    def params(self) -> int:
        """All weights (norms left out: under 0.01%)."""
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * self.layer_params + embed


# Shapes from each model's config.json on the Hugging Face Hub (huggingface.co/<id>/blob/main/config.json);
# SmolLM2 from the prepared model's config, micro from scoder_lib/llm/models.py (MICRO).
KNOWN: dict[str, Arch] = {
    "smollm2-135m-instruct": Arch(30, 576, 1536, 9, 3, 64, 49152, True),
    "micro": Arch(2, 64, 128, 4, 2, 16, 49152, True),
    "qwen/qwen2.5-coder-7b-instruct": Arch(28, 3584, 18944, 28, 4, 128, 152064, False),
    "qwen/qwen2.5-coder-14b-instruct": Arch(48, 5120, 13824, 40, 8, 128, 152064, False),
    "deepseek-ai/deepseek-coder-6.7b-base": Arch(32, 4096, 11008, 32, 32, 128, 32256, False),
    "deepseek-ai/deepseek-coder-6.7b-instruct": Arch(32, 4096, 11008, 32, 32, 128, 32256, False),
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([bm])(?![a-z])", re.I)
# A shape for a model known only by its size: Qwen2.5-Coder-7B's proportions (LoRA share, layers) scaled.
_REFERENCE = KNOWN["qwen/qwen2.5-coder-7b-instruct"]


@dataclass(frozen=True)
class ModelSize:
    name: str
    params: float
    arch: Arch | None  # None: known by its name's size only (LoRA counts are then proportional guesses)
    how: str  # "table", "config.json", "name", or "unknown"

    @property
    def layers(self) -> int:
        return self.arch.layers if self.arch else _REFERENCE.layers

    def lora_params(self, lora: LoraOptions) -> float:
        """Trainable LoRA parameters: r x (in + out) per targeted module, over the adapted layers."""
        arch = self.arch or _REFERENCE
        shapes = arch.module_shapes()
        per_layer = sum(lora.r * (shapes[m][0] + shapes[m][1]) for m in lora.target_modules if m in shapes)
        layers = min(lora.last_layers or arch.layers, arch.layers)
        scale = 1.0 if self.arch else self.params / _REFERENCE.params
        return per_layer * layers * scale

    def adapted_share(self, lora: LoraOptions) -> float:
        """Share of the decoder that backward passes through (from the first adapted layer up)."""
        return min(lora.last_layers or self.layers, self.layers) / self.layers


def model_size(name: str, cache_dir: Path | None = None) -> ModelSize:
    """Size of a model by name: the table, else a prepared copy's config.json, else a size in its name."""
    key = name.lower().rstrip("/")
    if key in KNOWN:
        return ModelSize(name, KNOWN[key].params, KNOWN[key], "table")
    for folder in _candidate_folders(name, cache_dir):
        arch = _arch_from_config(folder / "config.json")
        if arch is not None:
            return ModelSize(name, arch.params, arch, "config.json")
    m = _SIZE.search(name.split("/")[-1])
    if m:
        return ModelSize(name, float(m.group(1)) * (1e9 if m.group(2).lower() == "b" else 1e6), None, "name")
    return ModelSize(name, 0.0, None, "unknown")


def _candidate_folders(name: str, cache_dir: Path | None) -> list[Path]:
    out = [Path(name).expanduser()]
    if cache_dir is not None:
        out.append(cache_dir / "models" / name)
    return [p for p in out if p.is_dir()]


def _arch_from_config(path: Path) -> Arch | None:
    """A Llama-style shape from config.json (also a LoRA checkpoint's base, via adapter_config.json)."""
    if not path.is_file():
        adapter = path.with_name("adapter_config.json")
        if adapter.is_file():
            base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path", "")
            return _arch_from_config(Path(base) / "config.json") if base else None
        return None
    c = json.loads(path.read_text(encoding="utf-8"))
    try:
        heads = c["num_attention_heads"]
        return Arch(
            c["num_hidden_layers"],
            c["hidden_size"],
            c["intermediate_size"],
            heads,
            c.get("num_key_value_heads", heads),
            c.get("head_dim") or c["hidden_size"] // heads,
            c["vocab_size"],
            bool(c.get("tie_word_embeddings", False)),
        )
    except KeyError:
        return None


def sizes_of(cfg: Config) -> dict[str, ModelSize]:
    """The synthesizer, scorer, student and teacher of a config, by role."""
    cache = cfg.resolve(cfg.cache_dir)
    specs: dict[str, ModelSpec] = {"synthesizer": cfg.synthesizer, "student": cfg.final.student}
    specs["scorer"] = cfg.iterate.scorer or cfg.synthesizer
    return {role: model_size(spec.name, cache) for role, spec in specs.items()}


# ----------------------------------------------------------------------------- FLOPs per token
def forward_flops(size: ModelSize) -> float:
    """2 FLOPs per weight per token (attention scores left out: ~3% at 1K tokens for a 7B model)."""
    return 2.0 * size.params


def train_flops(size: ModelSize, opts: TrainOptions) -> float:
    """FLOPs per trained token: full 6P (8P with gradient checkpointing); LoRA 2P forward + 2P x the
    adapted share backward (input gradients only: the base weights are frozen), +2P x share recomputed."""
    checkpointing = bool(opts.extra_args.get("gradient_checkpointing"))
    if opts.method == "full":
        return (8.0 if checkpointing else 6.0) * size.params
    share = size.adapted_share(opts.lora)
    return 2.0 * size.params * (1.0 + share + (share if checkpointing else 0.0))


def gradient_flops(size: ModelSize, lora: LoraOptions) -> float:
    """FLOPs per token of one per-sample gradient pass (forward, then backward to the first adapted layer)."""
    return 2.0 * size.params * (1.0 + size.adapted_share(lora))
