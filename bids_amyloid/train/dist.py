"""Process-group facts for the group level: one process, or DDP under ``torchrun``.

Under ``torchrun`` every rank trains on its share of each epoch's weighted draw
(gloo on CPU, NCCL on CUDA); only rank 0 writes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class Dist:
    """Process-group facts; a single process is rank 0 of 1."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, use_cuda: bool) -> Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as tdist

        if not tdist.is_initialized():
            tdist.init_process_group(backend="nccl" if use_cuda else "gloo")
        return cls(rank=tdist.get_rank(), world=tdist.get_world_size(),
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")))

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as tdist

            tdist.barrier()

    def wrap(self, device: torch.device) -> Any:
        if self.world <= 1:
            return lambda module: module

        def ddp(module: nn.Module) -> nn.Module:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)

        return ddp

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as tdist

            if tdist.is_initialized():
                tdist.destroy_process_group()


@contextmanager
def distributed(use_cuda: bool) -> Iterator[Dist]:
    """The process group for the run (torn down at the end)."""
    dist = Dist.from_env(use_cuda)
    try:
        yield dist
    finally:
        dist.close()


@contextmanager
def deterministic(on: bool) -> Iterator[None]:
    """``--deterministic``: deterministic kernels only (restored afterwards)."""
    before = torch.are_deterministic_algorithms_enabled()
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
