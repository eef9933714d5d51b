"""PEFT LoRA checkpoint -> llama.cpp GGUF LoRA adapter (Llama architecture), with a converted-file cache.

What llama.cpp expects of an adapter file (src/llama-adapter.cpp, read to learn the format):
  * metadata: general.architecture (must equal the base model's), general.type = "adapter",
    adapter.type = "lora", adapter.lora.alpha (float32; llama.cpp scales each pair by alpha / rank,
    rank read from the tensor shape; alpha 0 means scale 1);
  * per adapted weight W named `blk.{i}.attn_q.weight` etc. in the base GGUF, two tensors
    `<name>.lora_a` with ggml shape ne = [n_in, r] and `<name>.lora_b` with ne = [r, n_out]. ggml
    shapes are numpy shapes reversed, so these are exactly PEFT's lora_A.weight (r, n_in) and
    lora_B.weight (n_out, r) as numpy arrays.
  * Llama q/k projections: HF checkpoints use the rotate-half rope layout; the GGUF base stores
    q/k rows permuted to the interleaved layout, so lora_B of q_proj and k_proj gets the same row
    permutation (A acts on the input side and is left alone).

PEFT's per-module scale (lora_alpha / r, or / sqrt(r) with rsLoRA, with rank_pattern and
alpha_pattern overrides) is written as one adapter.lora.alpha when it is uniform over modules;
otherwise it is folded into lora_b and alpha is written as 0 (scale 1). Unsupported on purpose,
with an error: DoRA, trained biases, modules_to_save (e.g. a retrained lm_head/embeddings), LoRA on
embeddings, non-Llama bases.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

from scoder_lib.core.io import atomic_path

CONVERTER_VERSION = 1  # part of the cache key: bump when the written file changes for the same input

# PEFT/HF module name -> GGUF tensor base name (llama architecture)
LLAMA_MODULES = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}
_KEY = re.compile(
    r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)"
    r"\.lora_([AB])(?:\.default)?\.weight$"
)


@dataclass(frozen=True)
class BaseInfo:
    """What the conversion needs to know about the base GGUF."""

    arch: str
    n_head: int
    n_head_kv: int
    n_layer: int
    shapes: dict[str, tuple[int, ...]]  # tensor name -> numpy shape (n_out, n_in) of 2-D weights


_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def read_gguf_header(path: str | Path) -> tuple[dict[str, object], dict[str, tuple[tuple[int, ...], int, int]]]:
    """(scalar metadata, {tensor: (numpy shape, ggml type, absolute data offset)}) of a GGUF file.

    A small reader of the GGUF layout (magic, version, counts, key/values, tensor infos, aligned
    data): gguf-py's GGUFReader materializes every vocabulary string and takes ~30 s on the base
    model here; this skips arrays (kept as None) and takes milliseconds.
    """
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if mm[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", mm, 4)
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported")
        off = 24

        def string(o: int) -> tuple[str, int]:
            (n,) = struct.unpack_from("<Q", mm, o)
            return mm[o + 8 : o + 8 + n].decode("utf-8", "replace"), o + 8 + n

        def skip_value(vtype: int, o: int) -> tuple[object, int]:
            if vtype in _SCALAR:
                fmt = _SCALAR[vtype]
                return struct.unpack_from(fmt, mm, o)[0], o + struct.calcsize(fmt)
            if vtype == _STRING:
                return string(o)
            if vtype == _ARRAY:
                etype, count = struct.unpack_from("<IQ", mm, o)
                o += 12
                if etype in _SCALAR:
                    return None, o + count * struct.calcsize(_SCALAR[etype])
                for _ in range(count):
                    _, o = skip_value(etype, o)
                return None, o
            raise ValueError(f"{path}: unknown GGUF value type {vtype}")

        meta: dict[str, object] = {}
        for _ in range(n_kv):
            key, off = string(off)
            (vtype,) = struct.unpack_from("<I", mm, off)
            meta[key], off = skip_value(vtype, off + 4)
        infos = []
        for _ in range(n_tensors):
            name, off = string(off)
            (n_dims,) = struct.unpack_from("<I", mm, off)
            dims = struct.unpack_from(f"<{n_dims}Q", mm, off + 4)
            ttype, toff = struct.unpack_from("<IQ", mm, off + 4 + 8 * n_dims)
            off += 4 + 8 * n_dims + 12
            infos.append((name, tuple(int(d) for d in reversed(dims)), int(ttype), int(toff)))
        align = int(meta.get("general.alignment") or 32)
        data = -(-off // align) * align
    return meta, {name: (shape, ttype, data + toff) for name, shape, ttype, toff in infos}


def read_gguf_tensor(path: str | Path, name: str) -> np.ndarray:
    """One tensor of a GGUF file as float32 (dequantized), numpy shape."""
    _, tensors = read_gguf_header(path)
    shape, ttype, offset = tensors[name]
    qtype = gguf.GGMLQuantizationType(ttype)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape))
    raw = np.fromfile(path, dtype=np.uint8, count=n // block * size, offset=offset)
    if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        plain = np.float32 if qtype == gguf.GGMLQuantizationType.F32 else np.float16
        return raw.view(plain).astype(np.float32).reshape(shape)
    return gguf.quants.dequantize(raw.reshape(*shape[:-1], shape[-1] // block * size), qtype).reshape(shape)


def base_info(base_gguf: str | Path) -> BaseInfo:
    meta, tensors = read_gguf_header(base_gguf)

    def field(key: str) -> object:
        if meta.get(key) is None:
            raise ValueError(f"{base_gguf}: metadata key {key} is missing")
        return meta[key]

    arch = str(field("general.architecture"))
    n_head = int(field(f"{arch}.attention.head_count"))  # type: ignore[arg-type]
    n_head_kv = int(meta.get(f"{arch}.attention.head_count_kv") or n_head)  # type: ignore[arg-type]
    shapes = {name: shape for name, (shape, _, _) in tensors.items() if len(shape) == 2}
    return BaseInfo(arch, n_head, n_head_kv, int(field(f"{arch}.block_count")), shapes)  # type: ignore[arg-type]


def rope_permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a q/k output projection: HF rotate-half order -> GGUF interleaved order, per head."""
    n_out = w.shape[0]
    head_dim = n_out // n_head
    if head_dim * n_head != n_out or head_dim % 2:
        raise ValueError(f"cannot split {n_out} rows into {n_head} heads of even size")
    return w.reshape(n_head, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _module_scale(cfg: dict, module: str, rank: int) -> float:
    """PEFT's scaling for one module: alpha / r (or alpha / sqrt(r) with rsLoRA), patterns included."""
    alpha = float(cfg.get("lora_alpha", 8))
    for pattern, value in (cfg.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):  # how PEFT matches pattern keys
            alpha = float(value)
            break
    return alpha / (math.sqrt(rank) if cfg.get("use_rslora") else rank)


def read_peft(adapter_dir: str | Path) -> tuple[dict, dict[tuple[int, str], dict[str, np.ndarray]]]:
    """(adapter_config, {(layer, "self_attn.q_proj"...): {"A": (r, n_in), "B": (n_out, r)}}), float32."""
    folder = Path(adapter_dir)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise ValueError(f"{folder}: peft_type {cfg.get('peft_type')} is not LORA")
    if cfg.get("use_dora"):
        raise ValueError(f"{folder}: DoRA adapters are not supported by llama.cpp")
    if cfg.get("alora_invocation_tokens") or cfg.get("invocation_string"):
        raise ValueError(f"{folder}: activated LoRA (aLoRA) adapters are not supported")
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        raise ValueError(f"{folder}: trained biases (bias={cfg.get('bias')}) are not supported")
    if cfg.get("modules_to_save"):
        raise ValueError(
            f"{folder}: modules_to_save={cfg['modules_to_save']} (full weights) cannot be "
            "expressed as a LoRA adapter; merge the checkpoint instead"
        )
    weights_file = folder / "adapter_model.safetensors"
    if not weights_file.exists():
        raise FileNotFoundError(f"{weights_file} is missing (only safetensors adapters are supported)")
    pairs: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for key, value in load_file(str(weights_file)).items():
        m = _KEY.match(key)
        if not m or m.group(3) not in LLAMA_MODULES:
            raise ValueError(f"{folder}: unsupported adapter tensor {key}")
        layer, module, ab = int(m.group(1)), f"{m.group(2)}.{m.group(3)}", m.group(4)
        pairs.setdefault((layer, module), {})[ab] = np.asarray(value, dtype=np.float32)
    for (layer, module), ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"{folder}: layer {layer} {module} lacks lora_{'B' if 'A' in ab else 'A'}")
    if not pairs:
        raise ValueError(f"{folder}: no LoRA tensors")
    return cfg, pairs


def pairs_for_base(
    cfg: dict, pairs: dict[tuple[int, str], dict[str, np.ndarray]], info: BaseInfo
) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], list[float], list[int]]:
    """(GGUF base name, A, B with q/k rows permuted), PEFT scale and rank of every adapted weight."""
    tensors: list[tuple[str, np.ndarray, np.ndarray]] = []
    scales: list[float] = []
    ranks: list[int] = []
    for (layer, path), ab in sorted(pairs.items()):
        a, b = ab["A"], ab["B"]
        module = path.split(".")[-1]
        name = f"blk.{layer}.{LLAMA_MODULES[module]}.weight"
        if name not in info.shapes:
            raise ValueError(f"{name} (from layer {layer} {module}) is not in the base model")
        n_out, n_in = info.shapes[name]
        rank = a.shape[0]
        if a.shape != (rank, n_in) or b.shape != (n_out, rank):
            raise ValueError(f"{name}: lora_A {a.shape} / lora_B {b.shape} do not fit base weight ({n_out}, {n_in})")
        if module == "q_proj":
            b = rope_permute_rows(b, info.n_head)
        elif module == "k_proj":
            b = rope_permute_rows(b, info.n_head_kv)
        scales.append(_module_scale(cfg, f"model.layers.{layer}.{path}", rank))
        ranks.append(rank)
        tensors.append((name, a, b))
    return tensors, scales, ranks


def convert_peft_lora(adapter_dir: str | Path, base_gguf: str | Path, out_path: str | Path) -> Path:
    """Write the GGUF LoRA adapter for `adapter_dir` over `base_gguf` to `out_path` (atomically)."""
    info = base_info(base_gguf)
    if info.arch != "llama":
        raise ValueError(f"base architecture {info.arch}: only llama is supported")
    cfg, pairs = read_peft(adapter_dir)
    tensors, scales, ranks = pairs_for_base(cfg, pairs, info)
    # One alpha when every module's scale is alpha / rank for the same alpha (the usual case);
    # otherwise each scale is folded into its lora_b and alpha 0 (scale 1) is written.
    alphas = [s * r for s, r in zip(scales, ranks)]
    uniform = max(alphas) - min(alphas) <= 1e-6 * max(abs(x) for x in alphas)
    alpha = alphas[0] if uniform else 0.0
    with atomic_path(out_path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), info.arch)  # writes general.architecture
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        writer.add_string("general.name", Path(adapter_dir).name)
        for (name, a, b), scale in zip(tensors, scales):
            if not uniform:
                b = b * np.float32(scale)
            writer.add_tensor(name + ".lora_a", np.ascontiguousarray(a, dtype=np.float32))
            writer.add_tensor(name + ".lora_b", np.ascontiguousarray(b, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(out_path)


def adapter_fingerprint(adapter_dir: str | Path) -> str:
    """Content hash of a PEFT adapter folder (config + weights) and of this converter's version."""
    folder = Path(adapter_dir)
    h = hashlib.sha256(f"gguf-lora-v{CONVERTER_VERSION}".encode())
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        h.update(name.encode())
        with open(folder / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def cached_gguf_lora(adapter_dir: str | Path, base_gguf: str | Path, base_sha256: str, cache_dir: str | Path) -> Path:
    """The converted adapter in `cache_dir`, keyed by the adapter's content (and this converter's
    version) and the base's sha256; converted once."""
    out = Path(cache_dir) / f"lora-{adapter_fingerprint(adapter_dir)[:20]}-{base_sha256[:12]}.gguf"
    if not out.exists():
        convert_peft_lora(adapter_dir, base_gguf, out)
    return out


def read_gguf_lora(path: str | Path) -> tuple[dict[str, str | float], dict[str, np.ndarray]]:
    """(metadata, tensors as numpy arrays in numpy shape) of an adapter file: for checks and tests."""
    r = gguf.GGUFReader(str(path))
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: np.array(t.data).reshape(tuple(int(x) for x in reversed(list(t.shape)))) for t in r.tensors}
    return meta, tensors
