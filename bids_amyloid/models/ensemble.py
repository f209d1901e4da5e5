"""Ensemble model files: the K students of ``group --cv`` used as one model.

An ensemble file is a ``torch.save``'d dict of plain values (read with
``weights_only=True``); it holds no weights, it names its members::

    format, format_version   "bids-amyloid-ensemble", 1
    role, contrasts          "student", the members' contrasts
    members                  per member: path (relative to the ensemble's folder), sha256,
                             fold, tau, training/validation/test_participants
    meta                     thresholds (τ of the ensemble), the union of the members'
                             training/validation/test participants, cv_folds, combination,
                             member_calibration
    versions, created_utc

Loading checks every member against its recorded SHA-256 before building it: a
member changed after the ensemble was written is refused. The ensemble's
probability is the mean of its members' probabilities; with
``member_calibration`` (every member records a calibration, fitted on its own
validation fold) the mean of their calibrated probabilities, which puts
students whose raw outputs sit on different scales on one before averaging.

Example
-------
>>> import tempfile, pathlib
>>> from bids_amyloid.config import AppConfig, ModelConfig
>>> from bids_amyloid.models import build_student, save_model
>>> cfg = AppConfig(model=ModelConfig(backbone="test_vit"))
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> members = [save_model(d / f"m{k}.pt", build_student(cfg, ("T1w",)), cfg,
...                       {"training_participants": [f"sub-0{k}"]}) for k in range(2)]
>>> _ = save_ensemble(d / "ens.pt", members, {"thresholds": {"tau": 0.4}})
>>> net, _, meta = load_any_model(d / "ens.pt")
>>> len(net.members), meta["training_participants"], meta["thresholds"]["tau"]
(2, ['sub-00', 'sub-01'], 0.4)
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bids_amyloid.config import AppConfig
from bids_amyloid.io import atomic_path
from bids_amyloid.models.checkpoint import (
    ENSEMBLE_FORMAT,
    ModelFileError,
    check_plain,
    load_model,
    load_payload,
    package_versions,
    read_model_file,
)
from bids_amyloid.models.networks import AmyloidNetwork, ModelOutput
from bids_amyloid.weights import sha256_of

LOG = logging.getLogger(__name__)
ENSEMBLE_VERSION = 1
SPLIT_KEYS = ("training_participants", "validation_participants", "test_participants")


class EnsembleNetwork(nn.Module):
    """Students whose probabilities are averaged; called like one student.

    ``logit`` is the logit of the mean probability (each member's probability after its
    Platt scaling ``sigmoid(slope·logit + intercept)`` where ``calibrations`` gives one);
    ``embedding`` the members'
    embeddings side by side ``(B, K·128)``; ``pool_weights`` their mean.
    ``backbone`` is the first member's: predict's saliency maps of an ensemble
    are the ensemble's input gradient, and HiResCAM on the first member's last block.
    """

    role = "student"

    def __init__(self, members: Sequence[AmyloidNetwork],
                 calibrations: Sequence[tuple[float, float]] | None = None) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.contrasts: tuple[str, ...] = tuple(members[0].contrasts)
        if calibrations is not None and len(calibrations) != len(members):
            raise ValueError(f"{len(calibrations)} calibrations for {len(members)} members")
        self.calibrations = list(calibrations) if calibrations is not None else None

    @property
    def backbone(self) -> Any:
        """The first member's backbone (its identity; every member has the same kind)."""
        return self.members[0].backbone

    def forward(self, mri: dict[str, torch.Tensor], mri_mask: dict[str, torch.Tensor]
                ) -> ModelOutput:
        outs = [member(mri, mri_mask) for member in self.members]
        logits = [o.logit.double() for o in outs]
        if self.calibrations is not None:
            logits = [slope * z + intercept
                      for z, (slope, intercept) in zip(logits, self.calibrations, strict=True)]
        prob = torch.stack([torch.sigmoid(z) for z in logits]).mean(0)
        return ModelOutput(logit=torch.logit(prob, eps=1e-12).float(),
                           embedding=torch.cat([o.embedding for o in outs], dim=-1),
                           pool_weights=torch.stack([o.pool_weights for o in outs]).mean(0))


def save_ensemble(path: Path | str, members: list[Path], meta: dict[str, Any],
                  folds: list[int] | None = None, member_calibration: bool = False) -> Path:
    """Write an ensemble of the student files ``members`` (paths stored relative to ``path``).

    Each member's identity (file hash, τ, its cohort split) is recorded; ``meta``
    gets the union of the members' split participants unless it has them.
    ``member_calibration``: average the members' calibrated probabilities (every
    member must record a calibration).
    """
    path = Path(path)
    records: list[dict[str, Any]] = []
    contrasts: list[str] | None = None
    for k, member in enumerate(members):
        payload = read_model_file(member)
        if payload["role"] != "student":
            raise ModelFileError(f"{member} holds a {payload['role']}: an ensemble is of students")
        if contrasts is not None and list(payload["contrasts"]) != contrasts:
            raise ModelFileError(f"{member}: contrasts {payload['contrasts']} differ from the "
                                 f"other members' {contrasts}")
        contrasts = list(payload["contrasts"])
        m = payload["meta"]
        if member_calibration and _calibration(m, member) is None:
            raise ModelFileError(f"{member} records no calibration: the ensemble cannot average "
                                 "calibrated probabilities")
        records.append({"path": os.path.relpath(member, path.parent),
                        "sha256": sha256_of(member),
                        "fold": folds[k] if folds is not None else k,
                        "tau": (m.get("thresholds") or {}).get("tau"),
                        **{key: list(m.get(key) or []) for key in SPLIT_KEYS}})
    if not records:
        raise ValueError("an ensemble needs at least one member")
    full = dict(meta)
    for key in SPLIT_KEYS:
        full.setdefault(key, sorted({s for r in records for s in r[key]}))
    full["member_calibration"] = bool(member_calibration)
    full.setdefault("combination", "mean of the members' calibrated probabilities (each "
                    "member's Platt scaling, fitted on its validation fold)" if member_calibration
                    else "mean probability of the members")
    payload = {"format": ENSEMBLE_FORMAT, "format_version": ENSEMBLE_VERSION, "role": "student",
               "contrasts": contrasts, "members": records, "meta": full,
               "versions": package_versions(),
               "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    check_plain(payload)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    LOG.info("wrote an ensemble of %d students to %s", len(records), path)
    return path


def _calibration(meta: dict[str, Any], source: Path) -> tuple[float, float] | None:
    """A member's Platt ``(slope, intercept)``, None if it records none."""
    from bids_amyloid.calibration import PlattScaling

    try:
        platt = PlattScaling.from_meta(meta)
    except ValueError as err:
        raise ModelFileError(f"{source}: {err}") from err
    return None if platt is None else (platt.slope, platt.intercept)


def read_ensemble_file(path: Path | str) -> dict[str, Any] | None:
    """The payload of an ensemble file; None if ``path`` is a single model file."""
    path = Path(path)
    payload = load_payload(path)
    if not isinstance(payload, dict) or payload.get("format") != ENSEMBLE_FORMAT:
        return None
    if payload.get("format_version") != ENSEMBLE_VERSION:
        raise ModelFileError(f"{path}: ensemble format version {payload.get('format_version')!r}"
                             f", this bids-amyloid reads {ENSEMBLE_VERSION}")
    if not payload.get("members"):
        raise ModelFileError(f"{path}: the ensemble names no member")
    return payload


def member_paths(path: Path, payload: dict[str, Any]) -> list[Path]:
    """The member files, checked against their recorded SHA-256 (tampering is refused)."""
    found = []
    for record in payload["members"]:
        member = (path.parent / record["path"]).resolve()
        if not member.is_file():
            raise ModelFileError(f"{path}: its member {record['path']} (fold {record['fold']}) "
                                 f"does not exist at {member}; keep the ensemble beside its "
                                 "fold-<k>/ folders")
        digest = sha256_of(member)
        if digest != record["sha256"]:
            raise ModelFileError(
                f"{path}: member {record['path']} (fold {record['fold']}) has SHA-256 {digest}, "
                f"but the ensemble recorded {record['sha256']}: the member file was changed "
                "after the ensemble was written; refusing to load it")
        found.append(member)
    return found


def load_any_model(path: Path | str, device: str | torch.device = "cpu",
                   backbone_weights: Path | str | None = None
                   ) -> tuple[nn.Module, AppConfig, dict[str, Any]]:
    """A model file or an ensemble file, as ``(network, config, meta)`` in eval mode.

    For an ensemble, ``config`` is its first member's (the members share the
    preprocessing and slice settings they were trained with) and ``meta`` the
    ensemble's, with ``members`` added.
    """
    path = Path(path)
    payload = read_ensemble_file(path)
    if payload is None:
        return load_model(path, device=device, backbone_weights=backbone_weights)
    networks, configs, calibrations = [], [], []
    calibrated = bool(payload["meta"].get("member_calibration"))
    for member in member_paths(path, payload):
        network, cfg, member_meta = load_model(member, device=device,
                                               backbone_weights=backbone_weights)
        calibration = _calibration(member_meta, member) if calibrated else None
        if calibrated and calibration is None:
            raise ModelFileError(f"{path}: member {member} records no calibration, which the "
                                 "ensemble averages")
        if calibration is not None:
            calibrations.append(calibration)
        if network.role != "student" or list(network.contrasts) != list(payload["contrasts"]):
            raise ModelFileError(f"{path}: member {member} is a {network.role} on "
                                 f"{'+'.join(network.contrasts)}, not a student on "
                                 f"{'+'.join(payload['contrasts'])}")
        networks.append(network)
        configs.append(cfg)
    if any(cfg.preproc != configs[0].preproc or cfg.model != configs[0].model
           or cfg.train.n_train_slices != configs[0].train.n_train_slices for cfg in configs):
        raise ModelFileError(f"{path}: its members were trained with different preprocessing, "
                             "model or slice settings; they cannot share one input")
    meta = {**payload["meta"], "members": payload["members"]}
    ensemble = EnsembleNetwork(networks, calibrations if calibrated else None)
    return ensemble.to(device).eval(), configs[0], meta
