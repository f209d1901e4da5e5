"""Training checkpoints: what one holds, how it is written and read back.

A checkpoint keeps the parameters that train plus buffers
(:func:`trainable_state`), and for ``last.pt`` the random generators' state
(:func:`rng_state`) so ``--resume`` continues exactly. Files are written
atomically and read with ``weights_only=True``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bids_amyloid.derivatives import CheckpointFolder
from bids_amyloid.io import atomic_path


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters that train, plus buffers: what a checkpoint must hold."""
    keep = {n for n, p in model.named_parameters() if p.requires_grad}
    keep |= {n for n, _ in model.named_buffers()}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k in keep}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load a :func:`trainable_state`; every trainable parameter must be in it."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    needed = {n for n, p in model.named_parameters() if p.requires_grad}
    absent = sorted(set(missing) & needed)
    if absent or unexpected:
        raise ValueError(f"{source}: checkpoint does not fit the model "
                         f"(missing {absent[:5]}, unexpected {list(unexpected)[:5]})")


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(),
                             "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for bad files
        raise ValueError(f"{path}: cannot read checkpoint ({err})") from err


def load_best(model: nn.Module, ckpt_dir: Path, key: str) -> int:
    """Load ``best_<key>.pt`` into ``model``; return its epoch."""
    path = CheckpointFolder(ckpt_dir).best(key)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no best checkpoint (did the phase run any epoch?)")
    ck = load_checkpoint(path)
    load_trainable_state(model, ck["model"], path)
    return int(ck["epoch"])
