"""The cohort: MRI–PET pairs, labels, exclusions and the subject-level split.

Rules (every value a :class:`bids_amyloid.config.CohortConfig` field):

- one sample = one (MRI session, PET scan) pair: each amyloid PET scan is paired
  with the same subject's closest MRI session within ``pair_window_days``
  (365: 365 days apart is in, 366 out) that has the T1w and every requested
  contrast (:func:`bids_amyloid.bids.pair_scans`, the pairing the participant
  level registered the PET through); all timepoints and tracers are kept;
- label = Centiloid > threshold (strict; ``tracer_thresholds`` per tracer,
  else ``centiloid_threshold``);
- split: ``StratifiedGroupKFold(n_folds, shuffle=True, random_state=split_seed)``
  over rows grouped by subject and stratified on the label; fold ``val_fold``
  is validation, ``test_fold`` test, the rest train. A subject (all sessions,
  all tracers) is in exactly one split;
- a PET scan that cannot be used becomes a row of ``excluded.tsv`` with every
  reason that applies (codes in :data:`EXCLUSION_CODES`).

``cohort.tsv`` is sorted and formatted deterministically: same inputs and
configuration → byte-identical file.

Example
-------
>>> threshold_for("PIB", CohortConfig(tracer_thresholds={"PIB": 16.4}))
16.4
>>> label_of(20.6, 20.6), label_of(20.61, 20.6)
(0, 1)
"""

from __future__ import annotations

import datetime
import logging
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from bids_amyloid.bids import (
    DAY_OFFSET_EPOCH,
    DAY_OFFSET_SOURCE,
    Inventory,
    PETScan,
    collect_inventory,
    date_kind,
    days_apart,
    pair_scans,
    pairing_contrasts,
)
from bids_amyloid.config import MRI_CONTRASTS, AppConfig, CohortConfig
from bids_amyloid.derivatives import GroupRun, session_label
from bids_amyloid.errors import (
    InputDataError,
    InputMissingError,
    NothingSelectedError,
    UsageError,
)
from bids_amyloid.io import write_json, write_tsv
from bids_amyloid.options import RunOptions
from bids_amyloid.tracers import normalise_tracer

LOG = logging.getLogger(__name__)

COHORT_COLUMNS = ("participant_id", "mri_session", "pet_session", "tracer", "centiloid",
                  "label", "days_apart", "split")
EXCLUDED_COLUMNS = ("participant_id", "pet_session", "tracer", "pet_file", "mri_session",
                    "centiloid", "reason", "detail")
PROVENANCE_COLUMNS = ("participant_id", "session", "modality", "tracer", "files", "date",
                      "date_source", "centiloid", "centiloid_source")
SPLITS = ("train", "val", "test")
EXCLUSION_CODES = {
    "no_mri": "the subject has no MRI session",
    "missing_contrast": "no MRI session of the subject has every requested contrast",
    "no_mri_within_window": "no MRI session within the pairing window",
    "no_date": "the PET or every candidate MRI session has no acquisition date",
    "dates_not_comparable": "PET and MRI dates come from different kinds of source",
    "centiloid_missing": "no Centiloid value",
    "centiloid_nan": "Centiloid is NaN or infinite",
    "centiloid_non_numeric": "Centiloid is not a number",
    "centiloid_contradictory": "two sources give different Centiloid values",
    "no_suvr_equation": "SUVR conversion chosen, but no equation for this tracer",
    "not_amyloid_tracer": "the PET tracer is not an amyloid tracer",
    "unknown_tracer": "the PET tracer cannot be determined",
}


def threshold_for(tracer: str, cfg: CohortConfig) -> float:
    """The Centiloid threshold of ``tracer`` (per-tracer override, else the default).

    ``tracer`` is a normalised code (:func:`bids_amyloid.tracers.normalise_tracer`,
    as inventories hold it); the configuration's keys are normalised the same
    way, so ``PiB = 16.4`` applies to ``PIB`` scans. The cohort stage and the
    predict level's evaluation both label through this function.
    """
    for name, value in cfg.tracer_thresholds.items():
        try:
            code = normalise_tracer(name)
        except ValueError as err:
            raise UsageError(f"cohort.tracer_thresholds: {err}") from err
        if code == tracer:
            return float(value)
    return float(cfg.centiloid_threshold)


def label_of(centiloid: float, threshold: float) -> int:
    """1 if ``centiloid > threshold`` (strict), else 0."""
    return int(centiloid > threshold)


def required_contrasts(*groups: tuple[str, ...]) -> tuple[str, ...]:
    """Union of contrast lists, in the canonical order (T1w, T2w, FLAIR, T2starw)."""
    wanted = {c for group in groups for c in group}
    unknown = sorted(wanted - set(MRI_CONTRASTS))
    if unknown:
        raise UsageError(f"unknown MRI contrast(s) {', '.join(unknown)}; "
                         f"known: {', '.join(MRI_CONTRASTS)}")
    return tuple(c for c in MRI_CONTRASTS if c in wanted)


def _excluded_row(pet: PETScan, reasons: list[str], mri_ses: str | None) -> dict[str, object]:
    codes = [r.split(":", 1)[0] for r in reasons]
    return {
        "participant_id": f"sub-{pet.sub}", "pet_session": session_label(pet.ses),
        "tracer": pet.tracer, "pet_file": pet.path.name,
        "mri_session": session_label(mri_ses) if mri_ses is not None else "n/a",
        "centiloid": pet.centiloid, "reason": ";".join(codes),
        "detail": " | ".join(r.split(":", 1)[-1].strip() for r in reasons),
    }


def _folds(labels: np.ndarray, subjects: np.ndarray, cfg: CohortConfig
           ) -> tuple[list[np.ndarray], str]:
    """Test indices of each fold, and the method that made them.

    StratifiedGroupKFold as the protocol says; when it cannot work (every class
    has fewer rows than folds: tiny demo cohorts) GroupKFold with the same seed,
    not stratified, with a warning. Subjects never straddle folds either way.
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    x = np.zeros(len(labels))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            splitter = StratifiedGroupKFold(n_splits=cfg.n_folds, shuffle=True,
                                            random_state=cfg.split_seed)
            folds = [test for _, test in splitter.split(x, labels, groups=subjects)]
            method = "StratifiedGroupKFold"
        except ValueError as err:
            counts = np.bincount(labels.astype(int), minlength=2)
            LOG.warning("split: StratifiedGroupKFold impossible with %d negative and %d positive "
                        "pairs (%s); using GroupKFold (subject-level, NOT stratified)",
                        counts[0], counts[1], err)
            plain = GroupKFold(n_splits=cfg.n_folds, shuffle=True, random_state=cfg.split_seed)
            folds = [test for _, test in plain.split(x, labels, groups=subjects)]
            method = "GroupKFold"
    for warning in caught:
        LOG.warning("split: %s", warning.message)
    return folds, method


def assign_splits(cohort: pd.DataFrame, cfg: CohortConfig) -> tuple[list[str], str]:
    """Split name per row (subject-level folds stratified on ``label``) and the method used."""
    subjects = cohort["participant_id"].to_numpy()
    n_subjects = len(set(subjects))
    if n_subjects < cfg.n_folds:
        raise NothingSelectedError(
            f"only {n_subjects} subjects pass the cohort rules; the {cfg.n_folds}-fold "
            "subject-level split needs at least that many")
    folds, method = _folds(cohort["label"].to_numpy(), subjects, cfg)
    split = ["train"] * len(cohort)
    for fold, test_idx in enumerate(folds):
        name = "val" if fold == cfg.val_fold else "test" if fold == cfg.test_fold else "train"
        for i in test_idx:
            split[i] = name
    return split, method


def check_cohort_config(ccfg: CohortConfig) -> None:
    """UsageError for settings no cohort can be built with (checked before any work)."""
    if ccfg.pair_window_days < 0:
        raise UsageError(f"the pairing window must be ≥ 0 days, not {ccfg.pair_window_days}")
    if ccfg.n_folds < 3 or not 0 <= ccfg.val_fold < ccfg.n_folds \
            or not 0 <= ccfg.test_fold < ccfg.n_folds or ccfg.val_fold == ccfg.test_fold:
        raise UsageError(f"cohort.val_fold ({ccfg.val_fold}) and test_fold ({ccfg.test_fold}) "
                         f"must be different folds among 0..{ccfg.n_folds - 1} (n_folds ≥ 3)")
    required_contrasts(ccfg.contrasts)
    for tracer in ccfg.tracer_thresholds:
        threshold_for(tracer, ccfg)


def build_cohort(inv: Inventory, cfg: AppConfig, extra_contrasts: tuple[str, ...] = ()
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(cohort, excluded)`` data frames from an inventory.

    A pair's MRI session has the T1w, ``cfg.cohort.contrasts`` and
    ``extra_contrasts`` (the teacher's): a modality-consistent cohort.
    """
    ccfg = cfg.cohort
    required_contrasts(ccfg.contrasts, extra_contrasts)
    check_cohort_config(ccfg)
    rows: list[dict[str, object]] = []
    excluded: list[dict[str, object]] = []
    for pet, mri, reason in pair_scans(inv, ccfg, extra_contrasts):
        if mri is None or pet.centiloid is None:
            reasons = [reason] if mri is None else []
            if pet.centiloid is None:
                reasons.append(pet.centiloid_note)
            excluded.append(_excluded_row(pet, reasons, mri.ses if mri else None))
            continue
        rows.append({
            "participant_id": f"sub-{pet.sub}", "mri_session": session_label(mri.ses),
            "pet_session": session_label(pet.ses), "tracer": pet.tracer,
            "centiloid": float(pet.centiloid),
            "label": label_of(pet.centiloid, threshold_for(pet.tracer, ccfg)),
            "days_apart": days_apart(mri, pet), "split": "",
        })
    for skipped in inv.skipped:
        code, _, detail = skipped.reason.partition(":")
        excluded.append({
            "participant_id": f"sub-{skipped.sub}", "pet_session": session_label(skipped.ses),
            "tracer": "n/a", "pet_file": skipped.path.name, "mri_session": "n/a",
            "centiloid": None, "reason": code, "detail": detail.strip(),
        })
    cohort = pd.DataFrame(rows, columns=list(COHORT_COLUMNS))
    cohort = cohort.sort_values(["participant_id", "pet_session", "tracer", "mri_session"],
                                kind="stable").reset_index(drop=True)
    cohort = cohort.astype({"label": int, "days_apart": int, "centiloid": float})
    if len(cohort):
        cohort["split"], cohort.attrs["split_method"] = assign_splits(cohort, ccfg)
    excl = pd.DataFrame(excluded, columns=list(EXCLUDED_COLUMNS))
    excl = excl.sort_values(["participant_id", "pet_session", "pet_file"],
                            kind="stable").reset_index(drop=True)
    return cohort, excl


def load_cohort(path: Path) -> pd.DataFrame:
    """Read a ``cohort.tsv`` written by :func:`run_cohort_stage`, checking its columns.

    Sessions keep their ``ses-`` prefix; in a dataset without sessions the file
    says ``n/a`` and the loaded value is ``""`` (as ``MRISession.ses``), so
    stripping the prefix gives the right derivative paths.
    """
    path = Path(path)
    if not path.is_file():
        raise InputMissingError(f"cohort file {path} does not exist "
                                "(run: bids-amyloid BIDS OUT group --stage cohort)")
    frame = pd.read_csv(path, sep="\t", dtype={"participant_id": str, "mri_session": str,
                                               "pet_session": str, "tracer": str,
                                               "split": str},
                        keep_default_na=False, na_values={"centiloid": ["n/a"]})
    missing = [c for c in COHORT_COLUMNS if c not in frame.columns]
    if missing:
        raise InputDataError(f"{path}: missing columns {', '.join(missing)}")
    bad = sorted(set(frame["split"]) - set(SPLITS))
    if bad:
        raise InputDataError(f"{path}: unknown split values {bad}")
    try:
        frame = frame.astype({"centiloid": float, "label": int, "days_apart": int})
    except (TypeError, ValueError) as err:
        raise InputDataError(f"{path}: {err}") from err
    for column in ("mri_session", "pet_session"):
        frame[column] = frame[column].replace("n/a", "")
    leaked = frame.groupby("participant_id")["split"].nunique()
    if (leaked > 1).any():
        raise InputDataError(f"{path}: subjects in several splits: "
                             f"{', '.join(leaked[leaked > 1].index)}")
    return frame[list(COHORT_COLUMNS)]


def summary_table(cohort: pd.DataFrame) -> pd.DataFrame:
    """A Table-1-like summary: pairs, subjects, % positive, Centiloid and tracers per split."""
    rows = []
    for name in (*SPLITS, "all"):
        part = cohort if name == "all" else cohort[cohort["split"] == name]
        if not len(part):
            continue
        tracers = part["tracer"].value_counts().sort_index()
        rows.append({
            "split": name, "pairs": len(part), "subjects": part["participant_id"].nunique(),
            "positive_pct": round(100.0 * part["label"].mean(), 1),
            "centiloid_mean": round(part["centiloid"].mean(), 1),
            "centiloid_sd": round(part["centiloid"].std(ddof=1), 1) if len(part) > 1 else 0.0,
            "days_apart_median": int(part["days_apart"].median()),
            "tracers": ", ".join(f"{t} {n}" for t, n in tracers.items()),
        })
    return pd.DataFrame(rows)


def format_summary(cohort: pd.DataFrame, excluded: pd.DataFrame) -> str:
    """Printable summary: the table plus exclusion counts per reason."""
    table = summary_table(cohort)
    lines = ["Cohort (MRI–PET pairs per split)", table.to_string(index=False)]
    if len(excluded):
        counts = excluded["reason"].str.split(";").explode().value_counts().sort_index()
        lines.append(f"Excluded PET scans: {len(excluded)}")
        lines += [f"  {code:<24} {n:>5}  {EXCLUSION_CODES.get(code, '')}"
                  for code, n in counts.items()]
    return "\n".join(lines)


def _date_text(date: datetime.date | None, source: str) -> str:
    if date is None:
        return "n/a"
    if date_kind(source) == "offset":
        return f"day {(date - DAY_OFFSET_EPOCH).days}"
    return date.isoformat()


def provenance_table(inv: Inventory) -> pd.DataFrame:
    """Where every date and Centiloid came from: one row per MRI session and PET scan."""
    rows: list[dict[str, object]] = [{
        "participant_id": f"sub-{m.sub}", "session": session_label(m.ses), "modality": "MRI",
        "tracer": "n/a", "files": " ".join(p.name for p in m.images.values()),
        "date": _date_text(m.date, m.date_source), "date_source": m.date_source,
        "centiloid": None, "centiloid_source": "n/a",
    } for m in inv.mri]
    rows += [{
        "participant_id": f"sub-{p.sub}", "session": session_label(p.ses), "modality": "PET",
        "tracer": p.tracer, "files": p.path.name, "date": _date_text(p.date, p.date_source),
        "date_source": p.date_source, "centiloid": p.centiloid,
        "centiloid_source": p.centiloid_note,
    } for p in inv.pet]
    frame = pd.DataFrame(rows, columns=list(PROVENANCE_COLUMNS))
    return frame.sort_values(["participant_id", "session", "modality", "tracer"],
                             kind="stable").reset_index(drop=True)


def write_cohort(folder: Path, cohort: pd.DataFrame, excluded: pd.DataFrame,
                 meta: dict[str, object], provenance: pd.DataFrame | None = None
                 ) -> tuple[Path, Path]:
    """Write ``cohort.tsv``, ``excluded.tsv``, ``cohort.json`` (+ ``provenance.tsv``) atomically."""
    files = GroupRun(folder)
    cohort_path = write_tsv(files.cohort, cohort)
    excluded_path = write_tsv(files.excluded, excluded)
    if provenance is not None:
        write_tsv(files.provenance, provenance)
    write_json(files.cohort_json, meta)
    return cohort_path, excluded_path


def _source_counts(sources: Iterable[str]) -> dict[str, int]:
    """``{"sessions.tsv acq_time": 12, "day offset": 30, "no date": 1}``."""
    counts: dict[str, int] = {}
    for source in sources:
        key = DAY_OFFSET_SOURCE if source.startswith(DAY_OFFSET_SOURCE) else source.split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def make_cohort(opts: RunOptions, cfg: AppConfig) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """Collect, pair, label, split and write; returns ``(cohort, excluded, folder)``.

    The contrasts are the union of ``cfg.cohort.contrasts`` and the teacher's
    (``opts.teacher_contrasts``). Raises NothingSelectedError if no pair remains
    (``excluded.tsv`` is written first so the reasons can be read).
    """
    contrasts = required_contrasts(cfg.cohort.contrasts, opts.teacher_contrasts)
    check_cohort_config(cfg.cohort)
    inv = collect_inventory(opts, cfg)
    cohort, excluded = build_cohort(inv, cfg, opts.teacher_contrasts)
    files = GroupRun.of(opts.output_dir, opts.run_name)
    meta = {
        "Description": "MRI-PET pairs, labels and subject-level split (bids-amyloid)",
        "Contrasts": list(contrasts),
        "PairingContrasts": list(pairing_contrasts(contrasts)),
        "PairWindowDays": cfg.cohort.pair_window_days,
        "CentiloidThreshold": cfg.cohort.centiloid_threshold,
        "TracerThresholds": {t: threshold_for(t, cfg.cohort)
                             for t in sorted({p.tracer for p in inv.pet})},
        "SUVREquation": cfg.cohort.suvr_equation,
        "Split": {"Method": cohort.attrs.get("split_method", "none"),
                  "Folds": cfg.cohort.n_folds,
                  "Seed": cfg.cohort.split_seed, "ValidationFold": cfg.cohort.val_fold,
                  "TestFold": cfg.cohort.test_fold},
        "Pairs": len(cohort), "Excluded": len(excluded),
        "DateSources": _source_counts([*(m.date_source for m in inv.mri),
                                       *(p.date_source for p in inv.pet)]),
        "Provenance": "provenance.tsv: date and Centiloid source of every session and scan",
    }
    provenance = provenance_table(inv)
    if not len(cohort):
        write_tsv(files.excluded, excluded)
        write_tsv(files.provenance, provenance)
        raise NothingSelectedError(
            f"no MRI–PET pair passes the cohort rules ({len(excluded)} PET scans excluded; "
            f"reasons in {files.excluded})")
    write_cohort(files.folder, cohort, excluded, meta, provenance)
    return cohort, excluded, files.folder


def run_cohort_stage(opts: RunOptions, cfg: AppConfig) -> int:
    """``group --stage cohort``: write the cohort files and print the summary."""
    from bids_amyloid.derivatives import init_output

    init_output(Path(opts.output_dir), opts.bids_dir)
    cohort, excluded, folder = make_cohort(opts, cfg)
    # The command's user-facing result (like the paper's Table 1): printed, not logged.
    print(format_summary(cohort, excluded))
    files = GroupRun(folder)
    print(f"Written: {files.cohort} and {files.excluded}")
    return 0
