"""torchrun / DistributedDataParallel plumbing: gloo on the CPU, NCCL on CUDA."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int
    world: int
    device: torch.device
    backend: str | None = None  # the process group's (gloo, nccl); None for a single process

    @property
    def main(self) -> bool:
        """Only rank 0 writes checkpoints, plots and exports."""
        return self.rank == 0

    def launch(self) -> dict:
        """How the run was launched, for ``config.json`` and ``metrics.json``: world size, backend, device type."""
        return {"world_size": self.world, "backend": self.backend, "device": self.device.type}


def setup() -> Context:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    backend = str(dist.get_backend()) if world > 1 and dist.is_initialized() else None
    return Context(rank, world, device, backend)


def mean_across(value: float, ctx: Context) -> float:
    """Average a scalar over all ranks."""
    if ctx.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return float(t) / ctx.world


def teardown(ctx: Context) -> None:
    if ctx.world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
