"""Value checks of a resolved configuration, run when it is loaded.

Types are checked while a TOML file or a flag is read (:mod:`bids_amyloid.config`);
here, before any work starts (:func:`load_run_config`, which the CLI uses), the *values* are: a choice among known names, a positive number, levels of
equal length; the ``[cohort]`` rules of :func:`bids_amyloid.cohort.check_cohort_config`. A bad value fails before any work starts,
with the key in the message (``preproc.skull_strip: ...``). The lists of known
names are read from the modules that use them, so they cannot drift.

Example
-------
>>> from bids_amyloid.config import AppConfig, PreprocConfig
>>> check_config(AppConfig())
>>> check_config(AppConfig(preproc=PreprocConfig(gamma=-1.0)))
Traceback (most recent call last):
...
bids_amyloid.config.ConfigError: preproc.gamma: must be > 0, got -1.0
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bids_amyloid.config import REINIT_LAYERS, AppConfig, ConfigError, load_config


def _choices(name: str) -> tuple[str, ...]:
    """Known names, from the module that uses them (imported only when checking)."""
    if name == "skull_strip":
        return ("hdbet", "deepbet")
    if name == "hdbet_mode":
        from bids_amyloid.preproc.skullstrip import HDBET_FOLDS
        return tuple(HDBET_FOLDS)
    if name == "hdbet_tta_mirrors":
        from bids_amyloid.preproc.skullstrip import MIRRORS
        return tuple(MIRRORS)
    if name == "pet_window_policy":
        from bids_amyloid.preproc.frames import POLICIES
        return POLICIES
    if name == "voi_registration":
        return ("affine", "rigid")  # see PreprocConfig.voi_registration
    if name == "suvr_reference":
        from bids_amyloid.preproc.template import GAAIN_VOIS
        return GAAIN_VOIS
    if name == "suvr_equation":
        from bids_amyloid.centiloid import EQUATIONS
        return tuple(EQUATIONS)
    raise KeyError(name)


def _problems(cfg: AppConfig) -> Iterator[tuple[str, str]]:
    """``(key, what is wrong)`` for every bad value."""
    pp, co = cfg.preproc, cfg.cohort
    for key in ("skull_strip", "hdbet_mode", "hdbet_tta_mirrors", "suvr_reference",
                "pet_window_policy", "voi_registration"):
        value = getattr(pp, key)
        if value not in _choices(key):
            yield f"preproc.{key}", f"must be one of {', '.join(_choices(key))}, got {value!r}"
    positive: dict[str, Callable[[Any], bool]] = {
        "n4_bins": lambda v: v > 0, "n4_shrink_factor": lambda v: v >= 1,
        "n4_convergence": lambda v: v > 0, "registration_voxel_mm": lambda v: v > 0,
        "registration_sampling": lambda v: 0 < v <= 1, "gamma": lambda v: v > 0,
        "pet_fwhm_mm": lambda v: v >= 0, "n_slices": lambda v: v >= 1,
        "min_slice_mean": lambda v: v >= 0, "slice_size": lambda v: v >= 1,
    }
    for key, ok in positive.items():
        value = getattr(pp, key)
        if not ok(value):
            rule = ("must be in (0, 1]" if key == "registration_sampling"
                    else "must be ≥ 0" if key in ("pet_fwhm_mm", "min_slice_mean")
                    else "must be ≥ 1" if key in ("n4_shrink_factor", "n_slices", "slice_size")
                    else "must be > 0")
            yield f"preproc.{key}", f"{rule}, got {value!r}"
    if pp.template_resolution not in (1, 2):
        yield "preproc.template_resolution", f"must be 1 or 2 (mm), got {pp.template_resolution!r}"
    for prefix in ("registration", "pet_registration"):
        lengths = {len(getattr(pp, f"{prefix}_{part}"))
                   for part in ("shrink", "smoothing", "iterations")}
        if len(lengths) != 1 or 0 in lengths:
            yield (f"preproc.{prefix}_shrink", f"{prefix}_shrink, _smoothing and _iterations "
                   "need one value per level, the same number each")
    for tracer, (start, end) in pp.pet_windows.items():
        if not 0 <= start < end:
            yield f"preproc.pet_windows.{tracer}", f"need 0 ≤ start < end (minutes), got {start}, {end}"
    low, high = pp.clip_percentiles
    if not 0 <= low < high <= 100:
        yield "preproc.clip_percentiles", f"need 0 ≤ low < high ≤ 100, got {pp.clip_percentiles}"
    low, high = pp.slice_range
    if not 0 <= low < high <= 1:
        yield "preproc.slice_range", f"need 0 ≤ low < high ≤ 1, got {pp.slice_range}"
    if cfg.distill.reinit_layers not in REINIT_LAYERS:
        yield "distill.reinit_layers", (f"must be one of {', '.join(REINIT_LAYERS)}, got "
                                        f"{cfg.distill.reinit_layers!r}")
    if cfg.train.cv_folds != 0 and cfg.train.cv_folds < 3:
        yield "train.cv_folds", (f"0 (one split) or ≥ 3 (a test, a validation and a training "
                                 f"fold each), got {cfg.train.cv_folds!r}")
    for key in ("rule_out_sensitivity", "rule_in_specificity"):
        if not 0 < getattr(cfg.train, key) <= 1:
            yield f"train.{key}", f"must be in (0, 1], got {getattr(cfg.train, key)!r}"
    if co.suvr_equation is not None and co.suvr_equation not in _choices("suvr_equation"):
        yield "cohort.suvr_equation", (f"unknown equation {co.suvr_equation!r}; choose from "
                                       f"{', '.join(_choices('suvr_equation'))}")


def load_run_config(path: Path | None = None,
                    overrides: dict[str, dict[str, Any]] | None = None) -> AppConfig:
    """:func:`~bids_amyloid.config.load_config`, then :func:`check_config`: what a run uses.

    Raises
    ------
    ConfigError
        Unreadable file, unknown key, wrong type or bad value (the key is named).
    """
    cfg = load_config(path, overrides)
    check_config(cfg)
    return cfg


def check_config(cfg: AppConfig) -> None:
    """Raise :class:`ConfigError` naming the first bad value of ``cfg``."""
    for key, problem in _problems(cfg):
        raise ConfigError(f"{key}: {problem}")
    from bids_amyloid.cohort import check_cohort_config
    from bids_amyloid.errors import UsageError

    try:
        check_cohort_config(cfg.cohort)
    except UsageError as err:
        raise ConfigError(str(err)) from err
