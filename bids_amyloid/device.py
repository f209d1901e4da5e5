"""The compute device of a run (group and predict level)."""

from __future__ import annotations

import torch

from bids_amyloid.errors import UsageError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → CUDA (this rank's GPU) when available, else CPU.

    A CUDA device asked for on a machine without CUDA is a usage error.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device
