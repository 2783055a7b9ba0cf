"""Data-parallel training under `torchrun`: one process per core or GPU, gradients all-reduced by DDP.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in every process it starts;
without them (a plain `movierec train`) everything here is a no-op for a world of one.
Backend: gloo on CPU, NCCL on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "cpu") -> World:
    """Join the process group torchrun described in the environment (once); World() when not under torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return World(rank=rank, size=size, local_rank=local_rank)


def rank_device(device: str, world: World) -> str:
    """Each process of a multi-GPU node drives its own GPU (cuda:LOCAL_RANK)."""
    if world.distributed and device == "cuda":
        return f"cuda:{world.local_rank}"
    return device


def broadcast_object(value: Any, world: World) -> Any:
    """Rank 0's `value` on every rank."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value: Any, world: World) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if not world.distributed:
        return [value]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, value)
    return out
