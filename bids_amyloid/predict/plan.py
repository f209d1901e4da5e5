"""Planning: which sessions to predict, and where their slice caches are or will be made."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bids_amyloid import derivatives as drv
from bids_amyloid.config import PreprocConfig, config_to_dict, preproc_fields
from bids_amyloid.derivatives import session_label
from bids_amyloid.options import RunOptions
from bids_amyloid.predict.model import PredictModel

if TYPE_CHECKING:
    from bids_amyloid.bids import MRISession

LOG = logging.getLogger(__name__)


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


def plan_sessions(sessions: Sequence[MRISession], contrasts: tuple[str, ...]
                  ) -> tuple[list[SessionPlan], list[dict[str, str]]]:
    """Sessions with at least one of ``contrasts`` (and a note if only some); the others excluded."""
    plans, excluded = [], []
    for s in sorted(sessions, key=lambda m: (m.sub, m.ses)):
        present = tuple(c for c in contrasts if c in s.images)
        if not present:
            have = "+".join(s.images) or "no MRI"
            excluded.append({"participant_id": f"sub-{s.sub}", "session_id": session_label(s.ses),
                             "reason": f"missing_contrast: the model needs "
                                       f"{' or '.join(contrasts)}; this session has {have}"})
            continue
        note = ""
        if len(present) < len(contrasts):
            missing = [c for c in contrasts if c not in present]
            note = f"{'+'.join(missing)} missing: predicted from {'+'.join(present)} only"
            LOG.warning("sub-%s %s: %s", s.sub, session_label(s.ses), note)
        plans.append(SessionPlan(s, present, note))
    return plans, excluded


def mri_parameters(preproc: PreprocConfig | dict[str, Any]) -> dict[str, Any]:
    """The ``[preproc]`` values that shape an MRI slice cache (JSON form): the fields the
    participant level hashes for an MRI unit (``participant.outputs.MODALITY_STAGES``);
    an MRI cache made with other PET-only values still fits."""
    from bids_amyloid.participant.outputs import MODALITY_STAGES

    data = config_to_dict(preproc) if not isinstance(preproc, dict) else dict(preproc)
    keep = set(preproc_fields(MODALITY_STAGES["mri"]))
    return {k: v for k, v in data.items() if k in keep}


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
    cache = drv.mri_slice_cache(root, session.sub, session.ses, contrast)
    meta = _sidecar(cache) if cache.is_file() else None
    if meta is None:
        return False, "no slice cache"
    if mri_parameters(meta.get("Parameters", {})) != mri_parameters(preproc):
        return False, "made with other preprocessing parameters"
    preproc_img = drv.mri_preproc_path(root, session.sub, session.ses, contrast)
    image_meta = _sidecar(preproc_img)
    raw = drv.source_uri(session.images[contrast], bids_dir)
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
                     session_label(plan.session.ses), out, reasons)
        todo.setdefault(target, []).append(plan)
    return todo


def preprocess_missing(todo: dict[Path, list[SessionPlan]], model: PredictModel,
                       opts: RunOptions) -> dict[tuple[str, str], str]:
    """Run MRI-only preprocessing where needed; return failure reasons per session."""
    from bids_amyloid.participant.run import run_mri_sessions

    failures: dict[tuple[str, str], str] = {}
    for root, plans in todo.items():
        LOG.info("preprocessing %d MRI session(s) into %s with the model file's parameters "
                 "(its training slice caches'): %s", len(plans), root, ", ".join(
                     f"{k}={v}" for k, v in mri_parameters(model.cfg.preproc).items()))
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
