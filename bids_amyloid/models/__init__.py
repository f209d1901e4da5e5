"""Networks of bids-amyloid: BiomedCLIP ViT + LoRA, teacher and student, model files.

Names are exported lazily: importing this package does not import torch;
the first use of a name does.

>>> from bids_amyloid.models import build_teacher, build_student, save_model, load_model
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AmyloidNetwork": "networks",
    "ModelOutput": "networks",
    "Student": "networks",
    "Teacher": "networks",
    "TripletOutput": "networks",
    "build_model": "networks",
    "build_student": "networks",
    "build_teacher": "networks",
    "drop_contrasts": "networks",
    "prepare_slices": "inputs",
    "Backbone": "backbone",
    "BackboneInfo": "backbone",
    "BackboneWeightsError": "backbone",
    "build_backbone": "backbone",
    "locate_weights": "backbone",
    "apply_lora": "lora",
    "lora_parameters": "lora",
    "ModelFileError": "checkpoint",
    "load_model": "checkpoint",
    "read_model_file": "checkpoint",
    "save_model": "checkpoint",
    "EnsembleNetwork": "ensemble",
    "load_any_model": "ensemble",
    "save_ensemble": "ensemble",
}

__all__ = [
    "AmyloidNetwork",
    "Backbone",
    "BackboneInfo",
    "BackboneWeightsError",
    "EnsembleNetwork",
    "ModelFileError",
    "ModelOutput",
    "Student",
    "Teacher",
    "TripletOutput",
    "apply_lora",
    "build_backbone",
    "build_model",
    "build_student",
    "build_teacher",
    "drop_contrasts",
    "load_any_model",
    "load_model",
    "locate_weights",
    "lora_parameters",
    "prepare_slices",
    "read_model_file",
    "save_ensemble",
    "save_model",
]

if TYPE_CHECKING:
    from bids_amyloid.models.backbone import (
        Backbone,
        BackboneInfo,
        BackboneWeightsError,
        build_backbone,
        locate_weights,
    )
    from bids_amyloid.models.checkpoint import (
        ModelFileError,
        load_model,
        read_model_file,
        save_model,
    )
    from bids_amyloid.models.ensemble import EnsembleNetwork, load_any_model, save_ensemble
    from bids_amyloid.models.inputs import prepare_slices
    from bids_amyloid.models.lora import apply_lora, lora_parameters
    from bids_amyloid.models.networks import (
        AmyloidNetwork,
        ModelOutput,
        Student,
        Teacher,
        TripletOutput,
        build_model,
        build_student,
        build_teacher,
        drop_contrasts,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
