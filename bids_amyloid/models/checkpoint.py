"""Model files: plain tensors + JSON-able values, loaded only with ``weights_only=True``.

A model file (``teacher.pt``, ``student_T1w.pt``) is a ``torch.save``'d dict::

    format, format_version      "bids-amyloid-model", 2 (1: one LoRA adapter on the fused
                                qkv, no longer read)
    role, contrasts             "teacher" | "student", ["T1w", ...]
    config                      the full resolved AppConfig (config_to_dict)
    backbone                    BackboneInfo: name, timm model, pretrained?, source, SHA-256 ...
    lora_blocks                 blocks carrying LoRA adapters
    state_dict                  trainable weights (LoRA, heads, contrast embeddings); plus the
                                whole backbone when it was randomly initialised
    meta                        caller's JSON-able dict: thresholds, training participants, metrics
    versions, created_utc       package versions, UTC time of writing

Nothing else: no pickled Python objects. :func:`load_model` reads with
``torch.load(..., weights_only=True)``, so a file carrying such objects is
refused before any of its code can run. A pretrained backbone is not stored;
its weights are located as in :mod:`bids_amyloid.models.backbone` and must
hash to the SHA-256 recorded at training, otherwise loading stops with a
clear error.

Example
-------
>>> import tempfile, pathlib, torch
>>> from bids_amyloid.config import AppConfig, ModelConfig
>>> from bids_amyloid.models import build_student
>>> cfg = AppConfig(model=ModelConfig(backbone="test_vit"))
>>> path = pathlib.Path(tempfile.mkdtemp()) / "student_T1w.pt"
>>> _ = save_model(path, build_student(cfg, ("T1w",)), cfg, {"thresholds": {"fixed": 0.5}})
>>> model, cfg2, meta = load_model(path)
>>> model.role, model.contrasts, meta["thresholds"]
('student', ('T1w',), {'fixed': 0.5})
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import pickle
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from bids_amyloid.config import AppConfig, ConfigError, config_from_dict, config_to_dict
from bids_amyloid.errors import InputMissingError
from bids_amyloid.io import atomic_path
from bids_amyloid.models.backbone import (
    BackboneInfo,
    BackboneWeightsError,
    build_backbone,
    state_dict_sha256,
    warn_random_once,
)
from bids_amyloid.models.lora import LORA_MARK, base_state_dict
from bids_amyloid.models.networks import AmyloidNetwork, build_model

LOG = logging.getLogger(__name__)

FORMAT = "bids-amyloid-model"
FORMAT_VERSION = 2    # 2: LoRA adapters per q/k/v slice (models.lora); 1 had one on qkv
ENSEMBLE_FORMAT = "bids-amyloid-ensemble"   # group --cv: members by file hash (models.ensemble)
REQUIRED = ("role", "contrasts", "config", "backbone", "lora_blocks", "state_dict", "meta")
PACKAGES = ("bids-amyloid", "torch", "timm", "open_clip_torch", "numpy")
BACKBONE_PREFIX = "backbone."


class ModelFileError(InputMissingError):
    """A model file is missing, unsafe, unreadable, or does not fit its backbone."""


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["torch"] = str(torch.__version__)  # with its build tag (+cu130, +cpu)
    return out


def _json_clean(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(meta, allow_nan=True))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: meta must be JSON-serialisable (numbers, strings, lists, "
                         f"dicts): {err}") from err


def _is_backbone_base(key: str) -> bool:
    return key.startswith(BACKBONE_PREFIX) and LORA_MARK not in key


def model_state(model: AmyloidNetwork) -> dict[str, torch.Tensor]:
    """The tensors a model file keeps (compact CPU copies)."""
    keep_base = not model.backbone.info.pretrained
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()
            if keep_base or not _is_backbone_base(k)}


def backbone_record(model: AmyloidNetwork) -> dict[str, Any]:
    """The backbone's identity, with the hash of its weights as they are now.

    A pretrained backbone is not stored in the file, so its weights must still
    be the ones loaded (they are frozen); a random one is stored, and hashed anew.
    """
    info = model.backbone.info
    current = state_dict_sha256(base_state_dict(model.backbone.trunk))
    if info.pretrained and current != info.sha256:
        raise ValueError(f"the frozen {info.name} backbone weights changed since they were loaded "
                         f"from {info.source}; a model file cannot reproduce them")
    return dataclasses.replace(info, sha256=current).to_dict()


PLAIN = (str, int, float, bool, type(None))


def check_plain(value: Any, where: str = "payload") -> None:
    """Raise unless ``value`` is made only of dicts (str keys), lists, tensors and plain scalars.

    Exactly what ``torch.load(..., weights_only=True)`` reads back, so every
    file written is loadable (a ``str`` subclass such as ``torch.__version__``
    would not be).
    """
    if type(value) in PLAIN or type(value) is torch.Tensor:
        return
    if type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise ValueError(f"{where}: key {key!r} is not a string")
            check_plain(item, f"{where}.{key}")
    elif type(value) in (list, tuple):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
    else:
        raise ValueError(f"{where}: {type(value).__name__} cannot go into a model file")


def save_model(path: Path | str, model: AmyloidNetwork, cfg: AppConfig,
               meta: dict[str, Any] | None = None) -> Path:
    """Write ``model`` with its configuration and ``meta`` to ``path`` atomically."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "role": model.role,
        "contrasts": list(model.contrasts),
        "config": config_to_dict(cfg),
        "backbone": backbone_record(model),
        "lora_blocks": list(model.backbone.lora_blocks),
        "state_dict": model_state(model),
        "meta": _json_clean(meta or {}, path),
        "versions": package_versions(),
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    check_plain(payload)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    LOG.info("wrote %s model (%s) to %s", model.role, "+".join(model.contrasts), path)
    return path


def load_payload(path: Path) -> Any:
    """What ``torch.load(path, weights_only=True)`` reads; a clear error for a missing, unsafe
    or unreadable file (model and ensemble files alike)."""
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ModelFileError(
            f"{path}: refused to load: the file carries pickled Python objects, which could run "
            f"code, instead of plain tensors and values ({str(err).splitlines()[0]}). Only model "
            "files written by bids-amyloid are accepted.") from err
    except Exception as err:  # malformed bytes make the unpickler raise almost anything
        raise ModelFileError(f"{path}: not a readable model file "
                             f"({type(err).__name__}: {err})") from err
    return payload


def read_model_file(path: Path | str) -> dict[str, Any]:
    """The validated payload of a model file, without building the model.

    Cheap enough to read a model's contrasts, configuration or training
    participants before loading any weights.
    """
    path = Path(path)
    payload = load_payload(path)
    if isinstance(payload, dict) and payload.get("format") == ENSEMBLE_FORMAT:
        raise ModelFileError(f"{path} is an ensemble of students (group --cv), which only "
                             "predict takes; give one member file (fold-<k>/student_*.pt) here")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a bids-amyloid model file (no format = {FORMAT!r})")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(f"{path}: model file format version {version!r} is newer than this "
                             f"bids-amyloid reads ({FORMAT_VERSION}); upgrade bids-amyloid")
    if version < FORMAT_VERSION:
        raise ModelFileError(f"{path}: model file format version {version} comes from an older "
                             "bids-amyloid whose LoRA adapters (one on the fused q/k/v projection) "
                             "this version does not build; train the model again")
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise ModelFileError(f"{path}: model file lacks {', '.join(missing)}")
    return payload


def _backbone_for(path: Path, payload: dict[str, Any], cfg: AppConfig,
                  backbone_weights: Path | str | None):
    recorded = BackboneInfo.from_dict(payload["backbone"])
    if not recorded.pretrained:
        return build_backbone(cfg.model, load_weights=False), recorded
    weights = backbone_weights
    if weights is None and cfg.model.backbone_weights and Path(cfg.model.backbone_weights).exists():
        weights = cfg.model.backbone_weights
    model_cfg = dataclasses.replace(cfg.model, backbone_weights=str(weights) if weights else None)
    try:
        backbone = build_backbone(model_cfg)
    except BackboneWeightsError as err:
        raise BackboneWeightsError(f"{path} needs the {recorded.name} backbone it was trained with "
                                   f"(SHA-256 {recorded.sha256}). {err}") from err
    if backbone.info.sha256 != recorded.sha256:
        raise ModelFileError(
            f"{path} was trained with {recorded.name} weights of SHA-256 {recorded.sha256} "
            f"(from {recorded.source}), but the weights found at {backbone.info.source} hash to "
            f"{backbone.info.sha256}: a different backbone would give different predictions. "
            "Provide the original weights with --backbone-weights or $BIDS_AMYLOID_WEIGHTS.")
    return backbone, recorded


def load_model(path: Path | str, device: str | torch.device = "cpu",
               backbone_weights: Path | str | None = None
               ) -> tuple[AmyloidNetwork, AppConfig, dict[str, Any]]:
    """Rebuild a saved model in eval mode; return ``(model, config, meta)``.

    ``backbone_weights`` overrides where a pretrained backbone is looked for
    (otherwise: the path recorded in the file if it still exists, then
    ``$BIDS_AMYLOID_WEIGHTS``, then the Hugging Face cache).
    """
    path = Path(path)
    payload = read_model_file(path)
    try:
        cfg = config_from_dict(payload["config"])
    except ConfigError as err:
        raise ModelFileError(f"{path}: its configuration does not fit this bids-amyloid: {err}") from err
    try:
        backbone, recorded = _backbone_for(path, payload, cfg, backbone_weights)
        model = build_model(payload["role"], cfg, tuple(payload["contrasts"]), backbone)
    except ValueError as err:
        raise ModelFileError(f"{path}: cannot rebuild the model: {err}") from err
    if list(model.backbone.lora_blocks) != list(payload["lora_blocks"]):
        raise ModelFileError(f"{path}: LoRA on blocks {payload['lora_blocks']} but this build puts it "
                             f"on {list(model.backbone.lora_blocks)}")
    state = payload["state_dict"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (recorded.pretrained and _is_backbone_base(k))]
    if missing or unexpected:
        raise ModelFileError(f"{path}: weights do not fit the {payload['role']} network: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    if not recorded.pretrained:
        if state_dict_sha256(base_state_dict(model.backbone.trunk)) != recorded.sha256:
            raise ModelFileError(f"{path}: the stored backbone weights do not match their "
                                 "recorded SHA-256 (corrupted file?)")
        model.backbone.info = recorded
        warn_random_once(f"{path} uses a RANDOMLY INITIALISED {recorded.name} backbone "
                         "(test/demo model)")
    return model.to(device).eval(), cfg, payload["meta"]
