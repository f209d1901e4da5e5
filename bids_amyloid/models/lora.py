"""LoRA adapters on the ViT's attention, everything else frozen.

Protocol (docs/protocol.md, paper §C.3.1): r = 32, alpha = 32, dropout 0.1 on the
query, key, value and output projections of blocks 6–11. timm fuses q, k and
v into one ``attn.qkv`` Linear (D → 3D); each of its three output slices gets
its own rank-r adapter, as separate q/k/v projections would (the reference
code adapts ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` of a
Hugging Face CLIP). For ViT-B/16 (768 wide) that is
6 blocks × 4 adapters × 32·(768 + 768) = 1,179,648 trainable parameters.

peft has no adapter per slice of a fused projection (one adapter on the
whole ``qkv`` would be 32·(768 + 2304) parameters, rank 32 shared by q, k
and v), so :class:`LoRALinear` implements the adapters here: the frozen
Linear stays as ``base_layer`` and is evaluated once; each part adds
``B·A·dropout(x)·alpha/r`` to its slice of the output, with peft's
initialisation (A Kaiming-uniform, B zero: a new adapter changes nothing).
State-dict names: ``blocks.6.attn.qkv.base_layer.weight``,
``blocks.6.attn.qkv.lora_A.q.weight``, ``blocks.6.attn.proj.lora_B.out.weight``.

A ViT with fewer blocks than the configured indices need (e.g. timm's
6-block ``test_vit``) gets LoRA on the last half of its blocks instead
(blocks ``depth - depth // 2`` to ``depth - 1``); this is logged and the
blocks used are recorded in the model file.

Example
-------
>>> from bids_amyloid.config import ModelConfig
>>> from bids_amyloid.models.backbone import create_trunk
>>> trunk = create_trunk("vit_base_patch16_224", 224, device="meta")
>>> apply_lora(trunk, ModelConfig())
(6, 7, 8, 9, 10, 11)
>>> sum(p.numel() for p in lora_parameters(trunk))
1179648
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from bids_amyloid.config import ModelConfig

LOG = logging.getLogger(__name__)

LORA_MARK = "lora_"
BASE_LAYER = ".base_layer"
FUSED_PARTS = {"attn.qkv": ("q", "k", "v")}   # fused projections: one adapter per output slice
SINGLE_PART = ("out",)


class LoRALinear(nn.Module):
    """A frozen Linear plus one low-rank adapter per equal slice (``parts``) of its output."""

    def __init__(self, base: nn.Linear, parts: tuple[str, ...], r: int, alpha: float,
                 dropout: float) -> None:
        super().__init__()
        if base.out_features % len(parts):
            raise ValueError(f"cannot split {base.out_features} outputs into {len(parts)} parts")
        self.base_layer = base
        self.parts = parts
        self.scaling = float(alpha) / float(r)
        width = base.out_features // len(parts)
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_dropout = nn.ModuleDict({p: nn.Dropout(dropout) for p in parts})
        self.lora_A = nn.ModuleDict({p: nn.Linear(base.in_features, r, bias=False, **like)
                                     for p in parts})        # Kaiming-uniform, as nn.Linear
        self.lora_B = nn.ModuleDict({p: nn.Linear(r, width, bias=False, **like) for p in parts})
        for p in parts:
            nn.init.zeros_(self._weights(p)[1])

    def _weights(self, part: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A (r, in), B (out/parts, r))`` of one part."""
        a, b = self.lora_A[part], self.lora_B[part]
        assert isinstance(a, nn.Linear) and isinstance(b, nn.Linear)
        return a.weight, b.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        delta = torch.cat([self.lora_B[p](self.lora_A[p](self.lora_dropout[p](x)))
                           for p in self.parts], dim=-1)
        return out + delta.to(out.dtype) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """``(out, in)``: what merging adds to the base weight (the adapters stacked by part)."""
        products = []
        for p in self.parts:
            a, b = self._weights(p)
            products.append(b @ a)
        return torch.cat(products) * self.scaling


def lora_block_indices(depth: int, requested: tuple[int, ...]) -> tuple[int, ...]:
    """The configured blocks if the ViT has them, else the last half of its blocks."""
    if requested and min(requested) >= 0 and max(requested) < depth:
        return tuple(sorted(set(requested)))
    fallback = tuple(range(depth - depth // 2, depth))
    LOG.warning("LoRA blocks %s do not exist in a %d-block ViT: using its last half %s",
                list(requested), depth, list(fallback))
    return fallback


def _targets(trunk: nn.Module, blocks: tuple[int, ...], targets: tuple[str, ...]
             ) -> list[tuple[str, nn.Linear]]:
    modules = dict(trunk.named_modules())
    found = []
    for block in blocks:
        for target in targets:
            name = f"blocks.{block}.{target}"
            module = modules.get(name)
            if not isinstance(module, nn.Linear):
                raise ValueError(f"LoRA target {name} is not a Linear layer of this ViT")
            found.append((name, module))
    return found


def apply_lora(trunk: nn.Module, model_cfg: ModelConfig) -> tuple[int, ...]:
    """Put LoRA adapters in place, freeze every other parameter; return the blocks used."""
    vit: Any = trunk
    blocks = lora_block_indices(len(vit.blocks), model_cfg.lora_blocks)
    for name, linear in _targets(trunk, blocks, tuple(model_cfg.lora_targets)):
        target = name.split(".", 2)[2]                      # "blocks.6.attn.qkv" → "attn.qkv"
        adapter = LoRALinear(linear, FUSED_PARTS.get(target, SINGLE_PART), model_cfg.lora_r,
                             model_cfg.lora_alpha, model_cfg.lora_dropout)
        parent, _, child = name.rpartition(".")
        setattr(trunk.get_submodule(parent), child, adapter)
    for name, param in trunk.named_parameters():
        param.requires_grad = LORA_MARK in name
    return blocks


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The LoRA adapter parameters of ``module``."""
    return [p for n, p in module.named_parameters() if LORA_MARK in n]


def base_state_dict(trunk: nn.Module) -> dict[str, torch.Tensor]:
    """The trunk's own weights under their pre-LoRA names (adapters left out)."""
    return {k.replace(BASE_LAYER, ""): v for k, v in trunk.state_dict().items() if LORA_MARK not in k}


@torch.no_grad()
def merged_state_dict(trunk: nn.Module) -> dict[str, torch.Tensor]:
    """A plain timm state dict with every adapter merged into its base weight.

    Loaded into a ViT built without LoRA, it gives the adapted trunk's outputs
    (in eval mode, where LoRA dropout is off).
    """
    state = base_state_dict(trunk)
    for name, module in trunk.named_modules():
        if isinstance(module, LoRALinear):
            key = f"{name}.weight"
            state[key] = state[key] + module.delta_weight().to(state[key].dtype)
    return state
