"""The process group a training run joins: one process, or DDP under torchrun (nccl on GPUs, gloo on CPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.world > 1


def init_distributed() -> Dist:
    """Join the process group torchrun describes (WORLD_SIZE > 1): nccl on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world == 1:
        return Dist(device=torch.device("cuda") if cuda else torch.device("cpu"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank, world, device, owns)


def all_sum(d: Dist, *values: float) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    if d.ddp:
        dist.all_reduce(t)
    return t.tolist()


def broadcast(d: Dist, obj: Any) -> Any:
    if not d.ddp:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main_rank(d: Dist, what: str, fn, *args) -> None:
    """Rank 0 runs fn(*args) (if fn is set); every rank learns whether it raised, so none waits forever."""
    error = None
    if fn and d.main:
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001 - re-raised below, after the other ranks know
            error = e
    if d.ddp and all_sum(d, float(error is not None))[0] and error is None:
        raise RuntimeError(f"rank {d.rank}: stopping because {what} raised on rank 0")
    if error is not None:
        raise error
