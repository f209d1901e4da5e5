"""The model file as predict sees it: network, configuration, τ and the model's cohort split."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bids_amyloid.config import AppConfig
from bids_amyloid.errors import UsageError

LOG = logging.getLogger(__name__)

# meta key of each split's participants, as train/stages.py records them
SPLIT_KEYS = {"train": "training_participants", "val": "validation_participants",
              "test": "test_participants"}
# subjects that chose the weights, the epochs, the checkpoints or τ: their predictions are
# optimistic
SEEN_SPLITS = ("train", "val")


@dataclass
class PredictModel:
    """A loaded student with everything predict needs to know about it."""

    network: Any  # bids_amyloid.models.AmyloidNetwork, in eval mode
    cfg: AppConfig  # the model file's configuration (preprocessing, slices, ...)
    meta: dict[str, Any]
    path: Path
    sha256: str
    device: str

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(".pt")

    @property
    def contrasts(self) -> tuple[str, ...]:
        return tuple(self.network.contrasts)

    @property
    def tau(self) -> float:
        return model_tau(self.meta)

    @property
    def cohort_splits(self) -> dict[str, str] | None:
        return cohort_splits(self.meta)


def model_tau(meta: dict[str, Any]) -> float:
    """τ recorded at training (F1-maximising on validation); 0.5 when the file has none."""
    thresholds = meta.get("thresholds")
    for value in ((thresholds or {}).get("tau") if isinstance(thresholds, dict) else None,
                  meta.get("tau")):
        if isinstance(value, int | float) and 0.0 < float(value) < 1.0:
            return float(value)
    LOG.warning("the model file records no threshold tau; positive_at_tau uses 0.5")
    return 0.5


def cohort_splits(meta: dict[str, Any]) -> dict[str, str] | None:
    """Split (``train``/``val``/``test``) of each subject label (no ``sub-``) of the model's
    cohort; None if the file records no cohort.

    A file from before validation subjects were recorded names only its
    training subjects: the others cannot be told apart (a warning says so).
    """
    splits: dict[str, str] = {}
    for split, key in SPLIT_KEYS.items():
        for label in meta.get(key) or ():
            splits.setdefault(str(label).removeprefix("sub-"), split)
    if not splits:
        return None
    if SPLIT_KEYS["val"] not in meta:
        LOG.warning("the model file records its training subjects only: validation subjects "
                    "(which chose its epochs and tau) cannot be flagged")
    return splits


def load_predict_model(path: Path, cfg: AppConfig) -> PredictModel:
    """Load a model file, or a ``group --cv`` ensemble file (members checked against their
    recorded hashes; its meta's splits are the union over members, so a subject in any
    member's train or val is flagged), for inference; the loader's errors (exit 64/66)
    propagate."""
    from bids_amyloid.device import resolve_device
    from bids_amyloid.models import load_any_model
    from bids_amyloid.weights import sha256_of

    device = str(resolve_device(cfg.train.device))
    network, model_cfg, meta = load_any_model(path, device=device,
                                              backbone_weights=cfg.model.backbone_weights)
    if getattr(network, "role", "student") != "student":
        raise UsageError(f"{path} is a {network.role} model, which needs PET; predict takes an "
                         "MRI-only student (student_<contrasts>.pt from the group level)")
    return PredictModel(network.eval(), model_cfg, meta, Path(path), sha256_of(Path(path)),
                        device)
