"""A tiny model trained 3 Adam steps, its moments read with moments.full_moments; run by test_launch.

    python fsdp_moments_job.py OUT.safetensors                      one process, the whole batch
    torchrun --nproc_per_node 2 fsdp_moments_job.py OUT.safetensors  FSDP2 over gloo, half a batch each

Both see the same global batch per step (rank r takes rows r::world), so the moments must agree.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.fsdp import fully_shard

from scoder_lib.method.launch import leave_process_group
from scoder_lib.method.moments import full_moments, sharding


def main(out: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Tanh(), torch.nn.Linear(6, 4))
    model[0].bias.requires_grad_(False)  # a frozen parameter has no moments
    if world > 1:
        fully_shard(model[0])
        fully_shard(model[2])
        fully_shard(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    data = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(1))
    for x in data:
        model(x[rank::world]).pow(2).mean().backward()  # FSDP averages the ranks' gradients
        opt.step()
        opt.zero_grad()
    layout = sharding(model, opt)
    tensors = full_moments(model, opt)  # every rank: a collective under FSDP
    if rank == 0:
        assert layout == ("fsdp" if world > 1 else "none"), layout
        save_file(tensors, out)


if __name__ == "__main__":
    main(sys.argv[1])
    leave_process_group()  # main's sharded model and optimizer are gone by now
