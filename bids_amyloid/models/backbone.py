"""The slice encoder: BiomedCLIP's vision trunk (a timm ViT), or a random timm ViT.

BiomedCLIP (``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``)
is an open_clip model whose image tower is timm's ``vit_base_patch16_224``;
its weights sit under the keys ``visual.trunk.*`` of the open_clip
checkpoint. Only that trunk is built and loaded here: the PubMedBERT text
tower is never constructed. The trunk's pooled output (the final-norm CLS
token, 768 values for ViT-B/16) is the per-slice feature.

Where the weights come from, first match wins:

1. ``cfg.model.backbone_weights`` (``--backbone-weights``): an open_clip
   folder (``open_clip_config.json`` + ``open_clip_pytorch_model.bin`` or
   ``open_clip_model.safetensors``), a folder holding such a ``biomedclip/``
   folder, or a single weights file (the config is then read from beside it,
   or BiomedCLIP's trunk is assumed);
2. ``$BIDS_AMYLOID_WEIGHTS``: the folder ``bids-amyloid-fetch-weights``
   fills, holding ``biomedclip/``;
3. the local Hugging Face cache (``$HF_HOME`` / ``$HF_HUB_CACHE``), read
   with no network access.

Nothing is ever downloaded here. No weights → :class:`BackboneWeightsError`
saying how to provide them; never a silent random initialisation. A timm ViT
name instead of ``biomedclip`` (``vit_tiny_patch16_224``, ``test_vit``) gives a
randomly initialised trunk for tests and demos, logged as such and recorded
in the model file.

Example
-------
>>> from bids_amyloid.config import ModelConfig
>>> bb = build_backbone(ModelConfig(backbone="test_vit"))
>>> bb.info.pretrained, bb.info.embed_dim
(False, 64)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bids_amyloid.config import ModelConfig
from bids_amyloid.errors import InputMissingError, UsageError

LOG = logging.getLogger(__name__)
_RANDOM_WARNED: set[str] = set()


def warn_random_once(message: str) -> None:
    """Log a randomly-initialised-backbone warning once per process and message: a group run
    builds and loads such networks dozens of times (every phase, fold and checkpoint)."""
    if message not in _RANDOM_WARNED:
        _RANDOM_WARNED.add(message)
        LOG.warning("%s", message)

BIOMEDCLIP = "biomedclip"
BIOMEDCLIP_HUB_ID = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
BIOMEDCLIP_TRUNK = "vit_base_patch16_224"
WEIGHTS_ENV = "BIDS_AMYLOID_WEIGHTS"
WEIGHTS_SUBDIR = "biomedclip"
CONFIG_NAME = "open_clip_config.json"
WEIGHT_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_model.bin",
)
TRUNK_PREFIX = "visual.trunk."

HOW_TO_PROVIDE = (
    "BiomedCLIP weights are needed and none were found (nothing is downloaded at run time). "
    "Provide them in one of these ways: (1) on a machine with internet, run "
    "`bids-amyloid-fetch-weights DIR` and then set the environment variable "
    f"{WEIGHTS_ENV}=DIR (DIR holds {WEIGHTS_SUBDIR}/{CONFIG_NAME} and "
    f"{WEIGHTS_SUBDIR}/open_clip_pytorch_model.bin); (2) pass --backbone-weights PATH "
    f"(an open_clip folder or weights file of {BIOMEDCLIP_HUB_ID}); (3) put the model in the "
    "local Hugging Face cache ($HF_HOME). For tests and demos only, --backbone "
    "vit_tiny_patch16_224 uses a randomly initialised ViT instead."
)


class BackboneWeightsError(InputMissingError):
    """Backbone weights are missing, unreadable or do not fit the model."""


@dataclass(frozen=True)
class BackboneInfo:
    """Identity of a backbone, recorded in every model file.

    ``sha256`` hashes the trunk's weights (names, dtypes, shapes and bytes, in
    sorted key order) as loaded, so the same weights give the same hash from
    a ``.bin`` or a ``.safetensors`` file.
    """

    name: str  # "biomedclip" or the timm name
    timm_model: str
    image_size: int
    embed_dim: int
    depth: int
    pretrained: bool
    source: str  # where the weights came from, or "random initialisation"
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackboneInfo:
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(names - set(data))
        if missing:
            raise ValueError(f"backbone record lacks {', '.join(missing)}")
        return cls(**{k: data[k] for k in names})


@dataclass(frozen=True)
class WeightsLocation:
    """A weights file, the open_clip config beside it (if any) and how it was found."""

    weights: Path
    config: Path | None
    origin: str


class Backbone(nn.Module):
    """A timm ViT trunk mapping images ``(N, 3, H, W)`` to features ``(N, D)``."""

    def __init__(self, trunk: nn.Module, info: BackboneInfo) -> None:
        super().__init__()
        self.trunk = trunk
        self.info = info
        self.lora_blocks: tuple[int, ...] = ()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(images)


def is_pretrained_name(name: str) -> bool:
    return name.lower() == BIOMEDCLIP


def create_trunk(timm_name: str, image_size: int | None,
                 device: str | torch.device = "cpu") -> nn.Module:
    """A randomly initialised timm ViT without classifier (pooled CLS output).

    ``image_size=None`` keeps timm's default size for the model, as open_clip
    does when it builds a timm vision tower.
    """
    import timm

    if not timm.is_model(timm_name):
        raise UsageError(f"unknown backbone {timm_name!r}: use 'biomedclip' or a timm ViT name "
                         "such as vit_tiny_patch16_224")
    size: dict[str, Any] = {} if image_size is None else {"img_size": image_size}
    with torch.device(device):
        trunk = timm.create_model(timm_name, pretrained=False, num_classes=0, **size)
    blocks = getattr(trunk, "blocks", None)
    if blocks is None or not hasattr(blocks[0], "attn") or not hasattr(blocks[0].attn, "qkv"):
        raise UsageError(f"backbone {timm_name!r} is not a ViT with blocks.N.attn.qkv")
    return trunk


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes, in sorted key order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _folder_location(folder: Path, origin: str) -> WeightsLocation:
    if not (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_SUBDIR).is_dir():
        folder = folder / WEIGHTS_SUBDIR
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            config = folder / CONFIG_NAME
            return WeightsLocation(folder / name, config if config.is_file() else None, origin)
    raise BackboneWeightsError(
        f"{folder} (from {origin}) holds no backbone weights: expected one of "
        f"{', '.join(WEIGHT_NAMES)} next to {CONFIG_NAME}, or a {WEIGHTS_SUBDIR}/ folder holding them"
    )


def _path_location(path: Path, origin: str) -> WeightsLocation:
    if path.is_dir():
        return _folder_location(path, origin)
    if path.is_file():
        config = path.parent / CONFIG_NAME
        return WeightsLocation(path, config if config.is_file() else None, origin)
    raise BackboneWeightsError(f"backbone weights {path} (from {origin}) do not exist. {HOW_TO_PROVIDE}")


def _hf_cache_location() -> WeightsLocation | None:
    """BiomedCLIP in the local Hugging Face cache, looked up without any network access."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - open_clip depends on huggingface_hub
        return None
    for name in WEIGHT_NAMES:
        found = try_to_load_from_cache(BIOMEDCLIP_HUB_ID, name)
        if isinstance(found, str):
            config = try_to_load_from_cache(BIOMEDCLIP_HUB_ID, CONFIG_NAME)
            return WeightsLocation(Path(found), Path(config) if isinstance(config, str) else None,
                                   "the Hugging Face cache")
    return None


def locate_weights(model_cfg: ModelConfig) -> WeightsLocation:
    """Find BiomedCLIP weights: the configured path, then ``$BIDS_AMYLOID_WEIGHTS``, then the HF cache."""
    if model_cfg.backbone_weights:
        return _path_location(Path(model_cfg.backbone_weights).expanduser(),
                              "--backbone-weights / [model] backbone_weights")
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return _path_location(Path(env).expanduser(), f"${WEIGHTS_ENV}")
    cached = _hf_cache_location()
    if cached is not None:
        return cached
    raise BackboneWeightsError(HOW_TO_PROVIDE)


def read_open_clip_config(path: Path | None) -> tuple[str, int]:
    """``(timm model name, image size)`` of an open_clip vision tower; BiomedCLIP's without a config."""
    if path is None:
        return BIOMEDCLIP_TRUNK, 224
    try:
        data = json.loads(path.read_text())
        vision = data.get("model_cfg", data)["vision_cfg"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise BackboneWeightsError(f"{path}: not an open_clip config with model_cfg.vision_cfg ({err})") from err
    name = vision.get("timm_model_name") if isinstance(vision, dict) else None
    if not name:
        raise BackboneWeightsError(f"{path}: the vision tower is not a timm model "
                                   "(no vision_cfg.timm_model_name); BiomedCLIP's is")
    size = vision.get("image_size", 224)
    if isinstance(size, list | tuple):
        if len(set(size)) != 1:
            raise BackboneWeightsError(f"{path}: non-square image_size {size} is not supported")
        size = size[0]
    return str(name), int(size)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a torch file read with ``weights_only=True``."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise BackboneWeightsError(f"{path}: cannot read safetensors weights ({err})") from err
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy format
    except pickle.UnpicklingError as err:
        raise BackboneWeightsError(f"{path}: refused: the file holds pickled Python objects, not "
                                   f"plain tensors ({str(err).splitlines()[0]})") from err
    except Exception as err:  # malformed bytes make the unpickler raise almost anything
        raise BackboneWeightsError(f"{path}: not a readable weights file "
                                   f"({type(err).__name__}: {err})") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneWeightsError(f"{path}: does not hold a state dict of tensors")
    return state


def extract_trunk(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The ``visual.trunk.*`` tensors of an open_clip state dict (or a bare timm state dict)."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    trunk = {k[len(TRUNK_PREFIX):]: v for k, v in state.items() if k.startswith(TRUNK_PREFIX)}
    if not trunk and "patch_embed.proj.weight" in state:
        trunk = state
    if trunk:  # a classifier saved with the trunk is not part of the slice encoder
        return {k: v for k, v in trunk.items() if not k.startswith("head.")}
    example = ", ".join(sorted(state)[:5])
    raise BackboneWeightsError(f"{path}: no '{TRUNK_PREFIX}*' keys (an open_clip timm vision tower) "
                               f"and not a timm ViT state dict; first keys: {example}")


def load_pretrained_trunk(location: WeightsLocation, image_size: int) -> tuple[nn.Module, str, str]:
    """Build the timm trunk named by the config and load its weights; return it, its name, its hash."""
    timm_name, size = read_open_clip_config(location.config)
    trunk: Any = create_trunk(timm_name, None)  # as open_clip builds it: timm's default size
    native = tuple(trunk.patch_embed.img_size)
    if native != (image_size, image_size) or size != image_size:
        raise UsageError(f"{location.weights}: the backbone takes {native[0]} px images (config: "
                         f"{size} px) but [model] image_size is {image_size}")
    state = extract_trunk(read_state_dict(location.weights), location.weights)
    try:
        trunk.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise BackboneWeightsError(f"{location.weights}: the weights do not fit timm "
                                   f"{timm_name!r}: {err}") from err
    return trunk, timm_name, state_dict_sha256(trunk.state_dict())


def build_backbone(model_cfg: ModelConfig, *, load_weights: bool = True) -> Backbone:
    """The configured backbone, without LoRA.

    ``load_weights=False`` builds a pretrained backbone's architecture with
    random weights (for loading a model file whose weights come later); its
    ``info`` then says so.
    """
    name = model_cfg.backbone
    if is_pretrained_name(name) and load_weights:
        location = locate_weights(model_cfg)
        LOG.info("loading %s vision trunk from %s (%s)", name, location.weights, location.origin)
        trunk, timm_name, sha = load_pretrained_trunk(location, model_cfg.image_size)
        source, pretrained = str(location.weights), True
    else:
        timm_name = BIOMEDCLIP_TRUNK if is_pretrained_name(name) else name
        trunk = create_trunk(timm_name, model_cfg.image_size)
        sha, source, pretrained = state_dict_sha256(trunk.state_dict()), "random initialisation", False
        if not is_pretrained_name(name):
            warn_random_once(f"backbone {name} is RANDOMLY INITIALISED (no pretrained weights): "
                             "for tests and demos only; the model file records this")
            if model_cfg.backbone_weights and load_weights:
                LOG.warning("backbone weights %s ignored: only 'biomedclip' loads weights",
                            model_cfg.backbone_weights)
    vit: Any = trunk
    info = BackboneInfo(name=BIOMEDCLIP if is_pretrained_name(name) else name, timm_model=timm_name,
                        image_size=model_cfg.image_size, embed_dim=int(vit.num_features),
                        depth=len(vit.blocks), pretrained=pretrained, source=source, sha256=sha)
    return Backbone(trunk, info)
