"""LoRA adapters (PEFT) on the ViT's attention, everything else frozen.

Protocol: r = 32, alpha = 32, dropout 0.1 on ``blocks.6–11.attn.qkv`` and
``blocks.6–11.attn.proj``. For ViT-B/16 (768 wide) that is
6 × [32·(768 + 2304) + 32·(768 + 768)] = 884,736 trainable parameters.

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
884736
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch
from torch import nn

from bids_amyloid.config import ModelConfig

LOG = logging.getLogger(__name__)

LORA_MARK = "lora_"
BASE_LAYER = ".base_layer"


def lora_block_indices(depth: int, requested: tuple[int, ...]) -> tuple[int, ...]:
    """The configured blocks if the ViT has them, else the last half of its blocks."""
    if requested and min(requested) >= 0 and max(requested) < depth:
        return tuple(sorted(set(requested)))
    fallback = tuple(range(depth - depth // 2, depth))
    LOG.warning("LoRA blocks %s do not exist in a %d-block ViT: using its last half %s",
                list(requested), depth, list(fallback))
    return fallback


def _check_targets(trunk: nn.Module, blocks: tuple[int, ...], targets: tuple[str, ...]) -> None:
    modules = dict(trunk.named_modules())
    for block in blocks:
        for target in targets:
            name = f"blocks.{block}.{target}"
            if not isinstance(modules.get(name), nn.Linear):
                raise ValueError(f"LoRA target {name} is not a Linear layer of this ViT")


def apply_lora(trunk: nn.Module, model_cfg: ModelConfig) -> tuple[int, ...]:
    """Inject LoRA adapters in place, freeze every other parameter; return the blocks used."""
    from peft import LoraConfig, inject_adapter_in_model

    vit: Any = trunk
    blocks = lora_block_indices(len(vit.blocks), model_cfg.lora_blocks)
    _check_targets(trunk, blocks, model_cfg.lora_targets)
    pattern = (r"blocks\.(" + "|".join(str(b) for b in blocks) + r")\.("
               + "|".join(re.escape(t) for t in model_cfg.lora_targets) + ")")
    config = LoraConfig(r=model_cfg.lora_r, lora_alpha=model_cfg.lora_alpha,
                        lora_dropout=model_cfg.lora_dropout, target_modules=pattern, bias="none")
    inject_adapter_in_model(config, trunk)
    for name, param in trunk.named_parameters():
        param.requires_grad = LORA_MARK in name
    return blocks


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The LoRA adapter parameters of ``module``."""
    return [p for n, p in module.named_parameters() if LORA_MARK in n]


def base_state_dict(trunk: nn.Module) -> dict[str, torch.Tensor]:
    """The trunk's own weights under their pre-LoRA names (adapters left out)."""
    return {k.replace(BASE_LAYER, ""): v for k, v in trunk.state_dict().items() if LORA_MARK not in k}
