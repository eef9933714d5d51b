"""Adam moments of every trainable parameter, whole, keyed by parameter name: saved with each
checkpoint for optimizer-aware influence, and read back.

Where the optimizer shards its state, the moments are gathered first (a collective: every rank
calls `full_moments`, rank 0 writes):
  - plain torch optimizers, alone or under DDP: every rank holds the whole state; read as is;
  - FSDP (1 or 2): torch's full optimizer state dict, keyed by the parameters' clean names;
  - DeepSpeed ZeRO 1/2/3: `deepspeed.utils.safe_get_full_optimizer_state` per parameter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
from torch.distributed.tensor import DTensor

from scoder_lib.core.logs import get_logger

log = get_logger(__name__)
MOMENTS = ("exp_avg", "exp_avg_sq")
Sharding = Literal["none", "fsdp", "deepspeed"]


def sharding(model: torch.nn.Module, optimizer: Any) -> Sharding:
    """How the optimizer state is laid out across ranks: whole on each ("none"), FSDP or DeepSpeed."""
    inner = optimizer
    for _ in range(4):  # accelerate and DeepSpeed wrap optimizers in optimizers (a few levels)
        if inner is None:
            break
        if type(inner).__module__.split(".")[0] == "deepspeed":
            return "deepspeed"
        inner = getattr(inner, "optimizer", None)
    if any(hasattr(p, "ds_id") for p in model.parameters()):  # ZeRO-3 parameters
        return "deepspeed"
    if any(isinstance(m, FullyShardedDataParallel | FSDPModule) for m in model.modules()):
        return "fsdp"
    if any(isinstance(p, DTensor) for p in model.parameters()):
        return "fsdp"
    return "none"


def full_moments(model: torch.nn.Module, optimizer: Any) -> dict[str, torch.Tensor]:
    """exp_avg.<name>, exp_avg_sq.<name> (on the CPU, in the optimizer's dtype) for every trainable
    parameter, and the Adam `step` where the optimizer records one.

    A collective where the state is sharded: call it on every rank. Under FSDP only rank 0 gets
    the tensors (the others get {}). Raises if no trainable parameter has moments (not Adam, no
    step taken yet, or a sharded layout read as a plain one): influence would otherwise fail much
    later, far from the cause; a few without (no gradient reached them) are logged.
    """
    layout = sharding(model, optimizer)
    if layout == "fsdp":
        tensors = _fsdp(model, optimizer)
        if not tensors and dist.is_initialized() and dist.get_rank() != 0:
            return tensors  # FSDP hands the full state to rank 0 only
    elif layout == "deepspeed":
        tensors = _deepspeed(model)
    else:
        tensors = _local(model, optimizer)
    # Counted, not matched by name: FSDP1 without use_orig_params shows flat parameters here.
    trainable = sum(p.requires_grad for p in model.parameters())
    found = sum(k.startswith("exp_avg.") for k in tensors)
    if not found:
        raise ValueError(
            f"no Adam moments for any of the {trainable} trainable parameters (optimizer "
            f"{type(optimizer).__name__}, state layout {layout!r}): influence needs Adam(W) after a step"
        )
    if found < trainable:
        log.warning(
            "Adam moments for only %d of %d trainable parameters (no gradient reached the rest)", found, trainable
        )
    return tensors


def _local(model: torch.nn.Module, optimizer: Any) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        state = optimizer.state.get(p, {})
        if p.requires_grad and all(k in state for k in MOMENTS):
            for k in MOMENTS:
                tensors[f"{k}.{name}"] = state[k].detach().cpu().contiguous()
            tensors.setdefault("step", torch.tensor(float(state.get("step", 0))))
    return tensors


def _fsdp(model: torch.nn.Module, optimizer: Any) -> dict[str, torch.Tensor]:
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
    osd = get_optimizer_state_dict(model, inner, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    tensors: dict[str, torch.Tensor] = {}
    for name, state in osd.get("state", {}).items():
        if all(k in state for k in MOMENTS):
            for k in MOMENTS:
                tensors[f"{k}.{name}"] = state[k].detach().cpu().contiguous()
            tensors.setdefault("step", torch.tensor(float(state.get("step", 0))))
    return tensors


def _deepspeed(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    try:
        from deepspeed.utils import safe_get_full_optimizer_state  # noqa: PLC0415 - only where DeepSpeed trains
    except ImportError as e:
        raise ImportError(f"the optimizer is DeepSpeed's but deepspeed does not import ({e})") from e
    tensors: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        for k in MOMENTS:
            full = safe_get_full_optimizer_state(p, k)  # collective under ZeRO: every rank calls it
            if full is not None:
                tensors[f"{k}.{name}"] = full.detach().cpu().contiguous()
    # ZeRO keeps one step for the flat partition: load_moments falls back to the checkpoint's step.
    return tensors


def save_moments(model: torch.nn.Module, optimizer: Any, path: Path) -> None:
    """full_moments(...) to a safetensors file (single process; see full_moments for ranks)."""
    save_file(full_moments(model, optimizer), str(path))


def load_moments(folder: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(exp_avg by name, exp_avg_sq by name, meta) of a checkpoint."""

    t = load_file(str(folder / "moments.safetensors"))
    m = {k[len("exp_avg.") :]: v for k, v in t.items() if k.startswith("exp_avg.")}
    v = {k[len("exp_avg_sq.") :]: v for k, v in t.items() if k.startswith("exp_avg_sq.")}
    meta = json.loads((folder / "meta.json").read_text())
    meta["adam_step"] = float(t["step"]) if "step" in t else meta["step"]
    return m, v, meta
