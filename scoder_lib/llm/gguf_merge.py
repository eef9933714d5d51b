"""Float16 GGUF weights for llama.cpp: the base converted once, a LoRA checkpoint merged into a copy.

Why: on a CPU, llama.cpp decoding several sequences together is fastest on float16 weights (measured
on the 2-core machine, 16 sequences from 250-token prompts in one 1-thread process: f16 78 tok/s, the
shipped Q4_1 60), and an adapter applied at run time costs extra matmuls at every adapted layer (f16 +
runtime LoRA: 63).
Float16 is also the transformers backend's float32 weights up to rounding, where Q4_1 with 8-bit
activations is not. Cost: ~270 MB of disk per model (the default SmolLM2-135M) and a few seconds.

The base is converted by llama.cpp's own quantizer (`llama_model_quantize`, F16 target), in a spawned
process so its log goes to a file. A merged file is a byte copy of the f16 base with each adapted
weight W replaced in place by f16(W + scale * B @ A): the same q/k row permutation and PEFT scale as
the GGUF adapter converter (`gguf_lora.pairs_for_base`), so no metadata is rewritten.
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
import tempfile
from pathlib import Path

import gguf
import numpy as np

from scoder_lib.core.io import atomic_path
from scoder_lib.core.logs import get_logger
from scoder_lib.llm import gguf_lora, llamacpp_worker

log = get_logger(__name__)

MERGE_VERSION = 1  # part of the file names: bump when the written bytes change for the same inputs


def f16_base(base_gguf: Path, base_sha256: str, cache_dir: Path) -> Path:
    """`base_gguf` with every quantized weight converted to float16 (norms stay float32); cached by sha256."""
    out = Path(cache_dir) / f"f16-{base_sha256[:16]}-v{MERGE_VERSION}.gguf"
    if out.exists():
        return out
    with atomic_path(out) as tmp, tempfile.TemporaryDirectory(prefix="scoder-f16-") as logdir:
        log_path = Path(logdir) / "quantize.log"
        proc = mp.get_context("spawn").Process(
            target=llamacpp_worker.to_f16, args=(str(base_gguf), str(tmp), str(log_path)), name="llamacpp-f16"
        )
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            tail = log_path.read_text(errors="replace").splitlines()[-12:] if log_path.exists() else []
            raise RuntimeError(f"converting {base_gguf} to float16 failed (exit {proc.exitcode}):\n" + "\n".join(tail))
    log.info("llamacpp: %s converted to float16 (%s, %.0f MB)", base_gguf.name, out.name, out.stat().st_size / 1e6)
    return out


def merge_lora(adapter_dir: Path, f16_gguf: Path, out_path: Path) -> Path:
    """Write `f16_gguf` with the PEFT LoRA in `adapter_dir` merged into its weights, to `out_path`."""
    info = gguf_lora.base_info(f16_gguf)
    if info.arch != "llama":
        raise ValueError(f"base architecture {info.arch}: only llama is supported")
    cfg, pairs = gguf_lora.read_peft(adapter_dir)
    tensors, scales, _ = gguf_lora.pairs_for_base(cfg, pairs, info)
    _, layout = gguf_lora.read_gguf_header(f16_gguf)
    with atomic_path(out_path) as tmp:
        shutil.copyfile(f16_gguf, tmp)
        for (name, a, b), scale in zip(tensors, scales):
            shape, ttype, offset = layout[name]
            if ttype != gguf.GGMLQuantizationType.F16:
                raise ValueError(f"{f16_gguf}: {name} is {gguf.GGMLQuantizationType(ttype).name}, not F16")
            w = np.memmap(tmp, dtype=np.float16, mode="r+", offset=offset, shape=shape)
            # float32 sum, one rounding to f16: the transformers backend adds the same delta in float32
            w[:] = (w.astype(np.float32) + np.float32(scale) * (b @ a)).astype(np.float16)
            w.flush()
            del w
    return Path(out_path)


def merged_f16(adapter_dir: Path | None, base_gguf: Path, base_sha256: str, cache_dir: Path) -> Path:
    """The float16 weights llama.cpp loads: the base's, or a LoRA checkpoint merged into them; cached
    by the base's sha256 and the adapter's content."""
    base16 = f16_base(base_gguf, base_sha256, cache_dir)
    if adapter_dir is None:
        return base16
    fp = gguf_lora.adapter_fingerprint(adapter_dir)
    out = Path(cache_dir) / f"merged-{fp[:20]}-{base_sha256[:12]}-v{MERGE_VERSION}.f16.gguf"
    if not out.exists():
        merge_lora(adapter_dir, base16, out)
        log.info("llamacpp: merged %s into %s", adapter_dir, out.name)
    return out
