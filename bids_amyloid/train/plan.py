"""What a group run trains: its phases, and the teacher's contrasts and settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bids_amyloid.config import AppConfig
from bids_amyloid.derivatives import GroupRun
from bids_amyloid.errors import UsageError
from bids_amyloid.options import RunOptions

PHASES = ("pretrain", "contrastive", "distill")
NO_TEACHER = "no-teacher"   # --ablate no-teacher: its phase, file tag and checkpoint folder


def plan_phases(stage: str, ablate: tuple[str, ...], external_teacher: bool) -> list[str]:
    """Phases to run for ``--stage``, ``--ablate`` and ``--teacher``."""
    if NO_TEACHER in ablate:                 # the student alone, phase 3 without a teacher
        if external_teacher or stage not in ("all", "distill"):
            raise UsageError(f"--ablate {NO_TEACHER} trains only the student, without a teacher: "
                             "use it with --stage all or distill and without --teacher")
        return ["distill"]
    wanted = list(PHASES) if stage == "all" else [stage]
    if external_teacher:
        if stage in ("pretrain", "contrastive"):
            raise UsageError(f"--teacher distils a given teacher: it cannot be used with "
                             f"--stage {stage}")
        wanted = ["distill"]
    skip = {"no-pretrain": "pretrain", "no-triplet": "contrastive"}
    phases = [p for p in wanted if p not in {skip[a] for a in ablate if a in skip}]
    if not phases:
        raise UsageError(f"--stage {stage} with --ablate {' '.join(ablate)} leaves nothing to run")
    return phases


def union(*groups: tuple[str, ...]) -> tuple[str, ...]:
    """Contrasts of all groups, in first-seen order."""
    return tuple(dict.fromkeys(c for g in groups for c in g))


def check_teacher_config(source: Path, saved: dict[str, Any], cfg: AppConfig) -> None:
    """The student and its data must match the teacher: backbone, image size, PET scaling."""
    pairs = {("model", "backbone"): cfg.model.backbone, ("model", "image_size"): cfg.model.image_size,
             ("train", "pet_scale"): cfg.train.pet_scale}
    wrong = [f"{sec}.{key} = {saved.get(sec, {}).get(key)!r} there, {ours!r} here"
             for (sec, key), ours in pairs.items()
             if sec in saved and key in saved[sec] and saved[sec][key] != ours]
    if wrong:
        raise UsageError(f"the teacher {source} was trained with other settings ({'; '.join(wrong)}"
                         "): use the same values (--backbone, or --config)")


def check_teacher_preproc(source: Path, saved: dict[str, Any], cfg: AppConfig) -> None:
    """A ``--teacher`` from another run must have seen slices made as this run's caches were.

    ``cfg`` carries the caches' ``[preproc]`` (:func:`bids_amyloid.train.data.cache_config`);
    ``saved`` is the teacher file's configuration, whose ``[preproc]`` is its own run's
    caches'. Files that record none (made before provenance) are not checked.
    """
    from bids_amyloid.config import PREPROC_STAGES, config_from_dict, preproc_parameters

    if not saved.get("preproc"):
        return
    theirs = preproc_parameters(config_from_dict({"preproc": saved["preproc"]}).preproc,
                                PREPROC_STAGES)
    ours = preproc_parameters(cfg.preproc, PREPROC_STAGES)
    differ = [f"{k} = {theirs[k]!r} there, {ours[k]!r} here" for k in ours
              if k in theirs and theirs[k] != ours[k]]
    if differ:
        raise UsageError(f"the teacher {source} was trained on slices preprocessed otherwise "
                         f"than this run's slice caches ({'; '.join(differ)}): re-run the "
                         "participant level with the teacher's [preproc] values (--config)")


def teacher_contrasts(opts: RunOptions, cfg: AppConfig, phases: list[str], folder: Path
                      ) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The teacher's contrasts: those of the teacher file a stage starts from, else
    ``--teacher-contrasts``, else the student's; with that file's configuration (``{}``
    when no file is read), so the file is read once."""
    source = opts.teacher
    if (source is None and "pretrain" not in phases and "no-pretrain" not in cfg.train.ablate
            and NO_TEACHER not in cfg.train.ablate):
        source = GroupRun(folder).teacher       # --stage contrastive / distill continue a run
    if source is not None and source.is_file():
        from bids_amyloid.models import read_model_file

        payload = read_model_file(source)
        if payload["role"] != "teacher":
            raise UsageError(f"{source} holds a {payload['role']}, not a teacher")
        found = tuple(payload["contrasts"])
        saved = payload.get("config", {})
        check_teacher_config(source, saved, cfg)
        if opts.teacher_contrasts and tuple(opts.teacher_contrasts) != found:
            raise UsageError(f"--teacher-contrasts {' '.join(opts.teacher_contrasts)} differ from "
                             f"the contrasts {' '.join(found)} of {source}")
        return found, saved
    return tuple(opts.teacher_contrasts) or tuple(cfg.cohort.contrasts), {}
