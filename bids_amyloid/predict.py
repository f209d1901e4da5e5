"""Predict level: amyloid positivity from MRI alone with a trained student model.

``bids-amyloid BIDS_DIR OUT predict --model student_T1w.pt`` runs, in order:

1. load the model file (``torch.load(weights_only=True)``; a pretrained
   backbone is looked up from ``--backbone-weights`` / ``$BIDS_AMYLOID_WEIGHTS``
   and must hash to what the model was trained with);
2. inventory the BIDS dataset; every MRI session holding at least one of the
   model's contrasts is predicted, the others are listed in ``excluded.tsv``
   with the reason (a multi-contrast model uses the subset present and says
   so in the ``note`` column);
3. reuse participant-level slice caches whose preprocessing parameters and
   sources match the model's, otherwise run the MRI part of preprocessing
   (same code, the model file's ``[preproc]`` parameters) — PET and Centiloid
   are never needed;
4. infer, and write ``OUT/predict/<model>/predictions.tsv``; subjects of the
   model's training cohort are flagged (and warned about unless
   ``--allow-training-subjects``); where the dataset has Centiloid values,
   ``evaluation.tsv`` (per MRI–PET pair) and ``metrics.tsv`` as at group level;
5. with ``--saliency``, maps and per-subject pages (:mod:`bids_amyloid.saliency`).

Outputs (all written atomically)::

    OUT/predict/<model>/predictions.tsv   participant_id session_id contrasts_used probability
                                          positive_at_0.5 positive_at_tau tau model model_sha256
                                          in_training_cohort note
    OUT/predict/<model>/excluded.tsv      participant_id session_id reason
    OUT/predict/<model>/evaluation.tsv    per MRI–PET pair with Centiloid and label (if any)
    OUT/predict/<model>/metrics.tsv       F1/accuracy/... at 0.5 and τ, AUC with 95 % CI (if any)
    OUT/predict/<model>/predict.json      provenance: model, configuration, counts

Example
-------
``bids-amyloid /data/new_bids /data/out predict --model /data/out/group/default/student_T1w.pt``
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bids_amyloid import __version__
from bids_amyloid import derivatives as drv
from bids_amyloid.config import AppConfig, PreprocConfig, config_to_dict
from bids_amyloid.errors import EXIT_OK, EXIT_SESSION_FAILED, NothingSelectedError
from bids_amyloid.io import remove_stale_temporaries, write_json, write_text
from bids_amyloid.options import RunOptions

if TYPE_CHECKING:
    import torch

    from bids_amyloid.bids import Inventory, MRISession

LOG = logging.getLogger(__name__)

PREDICTION_COLUMNS = ("participant_id", "session_id", "contrasts_used", "probability",
                      "positive_at_0.5", "positive_at_tau", "tau", "model", "model_sha256",
                      "in_training_cohort", "note")
EXCLUDED_COLUMNS = ("participant_id", "session_id", "reason")
# [preproc] settings that only concern PET: an MRI cache made with other values still fits
PET_ONLY_PARAMETERS = ("pet_fwhm_mm", "suvr_reference")
FLOAT_FORMAT = "%.6f"


# --------------------------------------------------------------------------- the model


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
    def training_subjects(self) -> set[str] | None:
        return training_subjects(self.meta)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def model_tau(meta: dict[str, Any]) -> float:
    """τ recorded at training (F1-maximising on validation); 0.5 when the file has none."""
    thresholds = meta.get("thresholds")
    for value in ((thresholds or {}).get("tau") if isinstance(thresholds, dict) else None,
                  meta.get("tau")):
        if isinstance(value, int | float) and 0.0 < float(value) < 1.0:
            return float(value)
    LOG.warning("the model file records no threshold tau; positive_at_tau uses 0.5")
    return 0.5


def _bare(label: str, prefix: str) -> str:
    label = str(label)
    return label[len(prefix):] if label.startswith(prefix) else label


def training_subjects(meta: dict[str, Any]) -> set[str] | None:
    """Subject labels (without ``sub-``) of the model's training cohort, None if not recorded."""
    for key in ("training_participants", "train_participants", "participants"):
        value = meta.get(key)
        if isinstance(value, dict):  # {"train": [...], "val": [...]}
            value = [s for group in value.values() for s in group]
        if isinstance(value, list | tuple):
            return {_bare(s, "sub-") for s in value}
    return None


def resolve_device(name: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def load_predict_model(path: Path, cfg: AppConfig) -> PredictModel:
    """Load a model file for inference; the loader's errors (exit 64/66) propagate."""
    from bids_amyloid.models import load_model

    device = resolve_device(cfg.train.device)
    network, model_cfg, meta = load_model(path, device=device,
                                          backbone_weights=cfg.model.backbone_weights)
    if getattr(network, "role", "student") != "student":
        from bids_amyloid.errors import UsageError

        raise UsageError(f"{path} is a {network.role} model, which needs PET; predict takes an "
                         "MRI-only student (student_<contrasts>.pt from the group level)")
    return PredictModel(network.eval(), model_cfg, meta, Path(path), file_sha256(Path(path)),
                        device)


# --------------------------------------------------------------------------- planning


@dataclass
class SessionPlan:
    """One MRI session to predict: the contrasts it offers and where their caches are."""

    session: MRISession
    contrasts: tuple[str, ...]
    note: str = ""
    caches: dict[str, Path] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return self.session.sub, self.session.ses


def session_id(ses: str) -> str:
    return f"ses-{ses}" if ses else "n/a"


def plan_sessions(sessions: Sequence[MRISession], contrasts: tuple[str, ...]
                  ) -> tuple[list[SessionPlan], list[dict[str, str]]]:
    """Sessions with at least one of ``contrasts`` (and a note if only some); the others excluded."""
    plans, excluded = [], []
    for s in sorted(sessions, key=lambda m: (m.sub, m.ses)):
        present = tuple(c for c in contrasts if c in s.images)
        if not present:
            have = "+".join(s.images) or "no MRI"
            excluded.append({"participant_id": f"sub-{s.sub}", "session_id": session_id(s.ses),
                             "reason": f"missing_contrast: the model needs "
                                       f"{' or '.join(contrasts)}; this session has {have}"})
            continue
        note = ""
        if len(present) < len(contrasts):
            missing = [c for c in contrasts if c not in present]
            note = f"{'+'.join(missing)} missing: predicted from {'+'.join(present)} only"
            LOG.warning("sub-%s %s: %s", s.sub, session_id(s.ses), note)
        plans.append(SessionPlan(s, present, note))
    return plans, excluded


def mri_parameters(preproc: PreprocConfig | dict[str, Any]) -> dict[str, Any]:
    """The ``[preproc]`` values that shape an MRI slice cache (JSON form)."""
    data = config_to_dict(preproc) if not isinstance(preproc, dict) else dict(preproc)
    return {k: v for k, v in data.items() if k not in PET_ONLY_PARAMETERS}


def _sidecar(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(drv.sidecar_of(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def cache_is_reusable(root: Path, session: MRISession, contrast: str, preproc: PreprocConfig,
                      bids_dir: Path) -> tuple[bool, str]:
    """Whether ``root`` holds a finished slice cache of this session made the model's way.

    Checks that cache, sidecar and the preprocessed image's sidecar exist, that
    the recorded ``Parameters`` equal the model's (PET-only settings aside) and
    that the preprocessed image was made from this session's raw file.
    """
    from bids_amyloid.preproc.pipeline import source_uri

    cache = drv.mri_slice_cache(root, session.sub, session.ses, contrast)
    meta = _sidecar(cache) if cache.is_file() else None
    if meta is None:
        return False, "no slice cache"
    if mri_parameters(meta.get("Parameters", {})) != mri_parameters(preproc):
        return False, "made with other preprocessing parameters"
    preproc_img = drv.derivative_path(root, session.sub, session.ses, "anat", suffix=contrast,
                                      ext=".nii.gz", space=preproc.template_space, desc="preproc")
    image_meta = _sidecar(preproc_img)
    raw = source_uri(session.images[contrast], bids_dir)
    if image_meta is None or not image_meta.get("Sources") or image_meta["Sources"][0] != raw:
        return False, f"not made from {raw}"
    return True, "reusable"


def output_source(out: Path) -> str | None:
    """The raw dataset an output folder was made from (``DatasetLinks.raw``), if recorded."""
    try:
        desc = json.loads((out / "dataset_description.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    link = desc.get("DatasetLinks", {}).get("raw")
    if link:
        return str(link)
    urls = [d.get("URL") for d in desc.get("SourceDatasets", []) if isinstance(d, dict)]
    return str(urls[0]) if urls and urls[0] else None


def locate_caches(plans: list[SessionPlan], model: PredictModel, opts: RunOptions,
                  private_root: Path) -> dict[Path, list[SessionPlan]]:
    """Fill ``plan.caches`` where reusable caches exist; return what still needs preprocessing.

    OUT itself is used (read, and written by the MRI preprocessing) when it was
    made from this BIDS dataset or is new; sessions whose caches in OUT were
    made differently are preprocessed into ``private_root`` instead, so the
    participant-level outputs of another configuration are never overwritten.
    """
    out, bids_dir = opts.output_dir, opts.bids_dir
    source = output_source(out)
    out_ok = source is None or source == bids_dir.resolve().as_uri()
    roots = [out, private_root] if out_ok else [private_root]
    todo: dict[Path, list[SessionPlan]] = {}
    for plan in plans:
        checks = {root: [cache_is_reusable(root, plan.session, c, model.cfg.preproc, bids_dir)
                         for c in plan.contrasts] for root in roots}
        found = next((r for r in roots if all(ok for ok, _ in checks[r])), None)
        if found is not None and not opts.overwrite:
            plan.caches = {c: drv.mri_slice_cache(found, plan.session.sub, plan.session.ses, c)
                           for c in plan.contrasts}
            continue
        untouched = out_ok and all(why == "no slice cache" for _, why in checks[out])
        target = out if untouched and not opts.overwrite else private_root
        if not untouched and out_ok and target == private_root:
            reasons = "; ".join(f"{c}: {why}" for c, (_, why) in zip(
                plan.contrasts, checks[out], strict=True))
            LOG.info("sub-%s %s: not reusing %s (%s)", plan.session.sub,
                     session_id(plan.session.ses), out, reasons)
        todo.setdefault(target, []).append(plan)
    return todo


def preprocess_missing(todo: dict[Path, list[SessionPlan]], model: PredictModel,
                       opts: RunOptions) -> dict[tuple[str, str], str]:
    """Run MRI-only preprocessing where needed; return failure reasons per session."""
    from bids_amyloid.preproc.pipeline import run_mri_sessions

    failures: dict[tuple[str, str], str] = {}
    for root, plans in todo.items():
        LOG.info("preprocessing %d MRI session(s) into %s with the model's parameters",
                 len(plans), root)
        contrasts = tuple(dict.fromkeys(c for p in plans for c in p.contrasts))
        status = run_mri_sessions([p.session for p in plans], contrasts, root, model.cfg,
                                  replace(opts, overwrite=opts.overwrite and root != opts.output_dir))
        for plan in plans:
            reason = status.get(plan.key, "not preprocessed")
            if reason is None:
                plan.caches = {c: drv.mri_slice_cache(root, plan.session.sub, plan.session.ses, c)
                               for c in plan.contrasts}
                missing = [str(p) for p in plan.caches.values() if not p.is_file()]
                if missing:
                    reason = f"preprocessing wrote no slice cache {', '.join(missing)}"
            if reason is not None:
                failures[plan.key] = str(reason)
    return failures


# --------------------------------------------------------------------------- inference


def even_positions(n_available: int, n_wanted: int) -> list[int]:
    """The slice selection of training (:func:`bids_amyloid.train.data.even_positions`)."""
    from bids_amyloid.train.data import even_positions as chosen

    return chosen(n_available, n_wanted)


@dataclass(frozen=True)
class SliceInput:
    """The slices of one contrast of one session, as the model sees them."""

    slices: np.ndarray  # float32 (n_slices, H, W), zero padded
    mask: np.ndarray  # bool (n_slices,)
    indices: tuple[int, ...]  # sagittal template indices of the real rows, in order


def load_slices(cache: Path, n_slices: int) -> SliceInput:
    """The ``n_slices`` evenly spaced slices of a cache, in numeric order, zero padded."""
    from bids_amyloid.errors import InputDataError

    try:
        array, indices, _ = drv.read_slice_cache(cache)
    except (OSError, ValueError, KeyError) as err:
        raise InputDataError(f"{cache}: cannot read slice cache ({err})") from err
    if array.ndim != 3 or array.shape[0] != len(indices) or not indices:
        raise InputDataError(f"{cache}: array {array.shape} does not match "
                             f"{len(indices)} SliceIndices")
    order = sorted(range(len(indices)), key=lambda k: indices[k])
    rows = [order[k] for k in even_positions(len(order), n_slices)]
    out = np.zeros((n_slices, *array.shape[1:]), dtype=np.float32)
    out[: len(rows)] = np.asarray(array[np.asarray(rows)], dtype=np.float32)
    mask = np.zeros(n_slices, dtype=bool)
    mask[: len(rows)] = True
    return SliceInput(out, mask, tuple(int(indices[r]) for r in rows))


def model_inputs(batch: list[dict[str, SliceInput]], model: PredictModel
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Stack sessions (same contrasts) into the network's ``mri`` and ``mri_mask`` dicts."""
    import torch

    from bids_amyloid.models import prepare_slices

    m = model.cfg.model
    images, masks = {}, {}
    for contrast in batch[0]:
        stack = np.stack([item[contrast].slices for item in batch])
        images[contrast] = prepare_slices(stack, mean=m.clip_mean, std=m.clip_std,
                                          size=m.image_size, device=model.device)
        masks[contrast] = torch.from_numpy(np.stack([item[contrast].mask for item in batch])
                                           ).to(model.device)
    return images, masks


def infer(plans: list[SessionPlan], model: PredictModel, batch_size: int = 8
          ) -> dict[tuple[str, str], float]:
    """Probability per session; sessions are batched with others offering the same contrasts."""
    import torch

    n_slices = model.cfg.train.n_train_slices
    groups: dict[tuple[str, ...], list[SessionPlan]] = {}
    for plan in plans:
        groups.setdefault(plan.contrasts, []).append(plan)
    probs: dict[tuple[str, str], float] = {}
    with torch.inference_mode():
        for group in groups.values():
            for start in range(0, len(group), batch_size):
                chunk = group[start:start + batch_size]
                items = [{c: load_slices(p.caches[c], n_slices) for c in p.contrasts}
                         for p in chunk]
                images, masks = model_inputs(items, model)
                logits = model.network(images, masks).logit.float()
                for plan, p in zip(chunk, torch.sigmoid(logits).cpu().tolist(), strict=True):
                    probs[plan.key] = float(p)
    return probs


# --------------------------------------------------------------------------- tables


def predictions_table(plans: list[SessionPlan], probs: dict[tuple[str, str], float],
                      model: PredictModel) -> pd.DataFrame:
    """``predictions.tsv`` rows, sorted by participant and session."""
    tau = model.tau
    trained = model.training_subjects
    rows = []
    for plan in plans:
        if plan.key not in probs:
            continue
        p = probs[plan.key]
        rows.append({
            "participant_id": f"sub-{plan.session.sub}",
            "session_id": session_id(plan.session.ses),
            "contrasts_used": "+".join(plan.contrasts),
            "probability": p,
            "positive_at_0.5": int(p > 0.5),
            "positive_at_tau": int(p > tau),
            "tau": tau,
            "model": model.name,
            "model_sha256": model.sha256,
            "in_training_cohort": "n/a" if trained is None else
            str(plan.session.sub in trained).lower(),
            "note": plan.note or "n/a",
        })
    return pd.DataFrame(rows, columns=list(PREDICTION_COLUMNS))


def label_of(centiloid: float, tracer: str, cfg: AppConfig) -> int:
    """Amyloid positive if Centiloid > threshold (strict; per-tracer override)."""
    threshold = cfg.cohort.tracer_thresholds.get(tracer, cfg.cohort.centiloid_threshold)
    return int(centiloid > threshold)


def evaluation_table(inv: Inventory, plans: list[SessionPlan], predictions: pd.DataFrame,
                     model: PredictModel) -> pd.DataFrame:
    """Predicted MRI sessions paired with Centiloid-bearing PET scans, with labels.

    Pairing and labels follow the model's training cohort rules (window,
    thresholds). Empty when the dataset has no usable Centiloid.
    """
    from bids_amyloid.bids import Inventory as Inv
    from bids_amyloid.bids import pair_pet_with_mri

    predicted = {(r.participant_id, r.session_id): r for r in predictions.itertuples(index=False)}
    sessions = tuple(p.session for p in plans
                     if (f"sub-{p.session.sub}", session_id(p.session.ses)) in predicted)
    pets = tuple(pet for pet in inv.pet if pet.centiloid is not None)
    if not pets or not sessions:
        return pd.DataFrame()
    pairs = pair_pet_with_mri(Inv(sessions, pets), (), model.cfg.cohort.pair_window_days)
    rows = []
    for pet, mri, _ in pairs:
        if mri is None or pet.centiloid is None:
            continue
        pred = predicted[(f"sub-{mri.sub}", session_id(mri.ses))]
        days = abs((mri.date - pet.date).days) if mri.date and pet.date else None
        rows.append({"participant_id": f"sub-{mri.sub}", "session_id": session_id(mri.ses),
                     "pet_session": session_id(pet.ses), "tracer": pet.tracer,
                     "centiloid": float(pet.centiloid),
                     "label": label_of(float(pet.centiloid), pet.tracer, model.cfg),
                     "days_apart": days, "probability": pred.probability,
                     "in_training_cohort": pred.in_training_cohort})
    return pd.DataFrame(rows)


def metrics_table(evaluation: pd.DataFrame, tau: float, cfg: AppConfig) -> pd.DataFrame:
    """Group-level metrics (at 0.5 and τ, AUC with subject-bootstrap CI) of the labelled pairs."""
    from bids_amyloid.train.metrics import auc_with_ci, binary_metrics

    sets = [("all", evaluation)]
    unseen = evaluation[evaluation["in_training_cohort"] != "true"]
    if len(unseen) < len(evaluation):
        sets.append(("not_in_training_cohort", unseen))
    rows = []
    for name, frame in sets:
        if frame.empty:
            continue
        y = frame["label"].to_numpy(int)
        p = frame["probability"].to_numpy(float)
        subjects = frame["participant_id"].tolist()
        auc, low, high = auc_with_ci(y, p, subjects, n_boot=cfg.train.bootstrap,
                                     seed=cfg.train.seed)
        row: dict[str, Any] = {"set": name, "n_pairs": len(frame),
                               "n_subjects": len(set(subjects)), "n_positive": int(y.sum()),
                               "auc": auc, "auc_ci_low": low, "auc_ci_high": high, "tau": tau}
        for suffix, threshold in (("0.5", 0.5), ("tau", tau)):
            for key, value in binary_metrics(y, p, threshold).items():
                row[f"{key}@{suffix}"] = value
        rows.append(row)
    return pd.DataFrame(rows)


def write_tsv(path: Path, frame: pd.DataFrame, columns: Sequence[str] | None = None) -> Path:
    """A TSV written atomically; NaN as ``n/a`` (BIDS), fixed float format."""
    if columns is not None and frame.empty:
        frame = pd.DataFrame(columns=list(columns))
    text = frame.to_csv(sep="\t", index=False, na_rep="n/a", float_format=FLOAT_FORMAT,
                        lineterminator="\n")
    return write_text(path, text)


# --------------------------------------------------------------------------- the level


def prediction_dir(out: Path, model_name: str) -> Path:
    return Path(out) / "predict" / model_name


def warn_training_subjects(predictions: pd.DataFrame, opts: RunOptions) -> None:
    flagged = sorted(set(predictions.loc[predictions["in_training_cohort"] == "true",
                                         "participant_id"]))
    if flagged and not opts.allow_training_subjects:
        shown = ", ".join(flagged[:10]) + (" …" if len(flagged) > 10 else "")
        LOG.warning("%d subject(s) were in the model's training cohort (%s): their predictions "
                    "are optimistic and flagged in_training_cohort=true; "
                    "--allow-training-subjects silences this warning", len(flagged), shown)


def run_predict(opts: RunOptions, cfg: AppConfig) -> int:
    """Predict every selected MRI session; return the exit code (1 if a session failed)."""
    if opts.model is None:
        from bids_amyloid.errors import UsageError

        raise UsageError("predict needs --model PATH (a student_*.pt file)")
    model = load_predict_model(opts.model, cfg)
    LOG.info("model %s: %s, contrasts %s, tau %.3f, backbone %s", model.path, model.sha256[:12],
             "+".join(model.contrasts), model.tau, model.network.backbone.info.name)
    folder = prediction_dir(opts.output_dir, model.name)
    drv.init_output(opts.output_dir, opts.bids_dir)
    if folder.exists():
        remove_stale_temporaries(folder)

    from bids_amyloid.bids import collect_inventory

    inv = collect_inventory(opts, cfg)
    plans, excluded = plan_sessions(inv.mri, model.contrasts)
    if not plans:
        write_tsv(folder / "excluded.tsv", pd.DataFrame(excluded), EXCLUDED_COLUMNS)
        raise NothingSelectedError(
            f"no selected MRI session has {' or '.join(model.contrasts)}, which "
            f"{model.path.name} needs ({len(excluded)} session(s) listed in "
            f"{folder / 'excluded.tsv'})")
    todo = locate_caches(plans, model, opts, folder / "derivatives")
    failures = preprocess_missing(todo, model, opts)
    for (sub, ses), reason in sorted(failures.items()):
        excluded.append({"participant_id": f"sub-{sub}", "session_id": session_id(ses),
                         "reason": f"preprocessing_failed: {reason}"})
    ready = [p for p in plans if p.key not in failures]
    probs = infer(ready, model)
    predictions = predictions_table(ready, probs, model)
    write_tsv(folder / "predictions.tsv", predictions, PREDICTION_COLUMNS)
    write_tsv(folder / "excluded.tsv",
              pd.DataFrame(excluded).sort_values(["participant_id", "session_id"])
              if excluded else pd.DataFrame(), EXCLUDED_COLUMNS)
    warn_training_subjects(predictions, opts)

    evaluation = evaluation_table(inv, ready, predictions, model)
    if not evaluation.empty:
        write_tsv(folder / "evaluation.tsv", evaluation)
        metrics = metrics_table(evaluation, model.tau, cfg)
        write_tsv(folder / "metrics.tsv", metrics)
        LOG.info("metrics on %d labelled MRI–PET pairs written to %s", len(evaluation),
                 folder / "metrics.tsv")
    if opts.saliency and ready:
        from bids_amyloid.saliency import write_saliency

        write_saliency(ready, model, predictions, folder)
    write_json(folder / "predict.json", {
        "GeneratedBy": {"Name": "bids-amyloid", "Version": __version__},
        "Model": {"Path": str(model.path), "SHA256": model.sha256,
                  "Contrasts": list(model.contrasts), "Tau": model.tau,
                  "Backbone": model.network.backbone.info.to_dict()},
        "BIDSDir": str(opts.bids_dir),
        "Sessions": {"predicted": len(predictions), "excluded": len(excluded),
                     "failed": len(failures)},
        "Configuration": config_to_dict(model.cfg),
    })
    LOG.info("predicted %d session(s) → %s; %d excluded, %d failed", len(predictions),
             folder / "predictions.tsv", len(excluded), len(failures))
    return EXIT_SESSION_FAILED if failures else EXIT_OK
