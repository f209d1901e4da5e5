"""Typed, frozen configuration with the paper's defaults.

Every value of the reference protocol (Chiumento et al., 2026; see docs/protocol.md)
lives here once. A run's configuration is built from these defaults, then a
TOML file (``--config``), then only the flags the user actually typed. The
resolved configuration is written next to every output and into every model
file.

Example
-------
>>> cfg = AppConfig()
>>> cfg.cohort.centiloid_threshold
20.6
>>> cfg2 = apply_overrides(cfg, {"cohort": {"pair_window_days": 180}})
>>> cfg2.cohort.pair_window_days, cfg.cohort.pair_window_days
(180, 365)
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids_amyloid.config_fields import (  # re-exported: the tags live there
    MRI,  # noqa: F401
    PET,
    PET_WINDOWS_MIN,
    PREPROC_STAGES,  # noqa: F401
    SLICE,  # noqa: F401
    mri_field,
    pet_field,
    slice_field,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TEMPLATE_SPACE = "MNI152NLin2009aSym"
MRI_CONTRASTS = ("T1w", "T2w", "FLAIR", "T2starw")


@dataclass(frozen=True)
class CohortConfig:
    """Labels, MRI–PET pairing and the subject-level split."""

    centiloid_threshold: float = 20.6  # positive if CL > threshold (strict)
    tracer_thresholds: dict[str, float] = field(default_factory=dict)  # e.g. {"PIB": 16.4}
    centiloid_column: str | None = None  # None: auto-detect
    suvr_equation: str | None = None  # key of the SUVR→CL table, opt-in only
    pair_window_days: int = 365
    contrasts: tuple[str, ...] = ("T1w",)
    n_folds: int = 5
    split_seed: int = 42
    val_fold: int = 0
    test_fold: int = 1


@dataclass(frozen=True)
class PreprocConfig:
    """MRI and PET preprocessing, and the sagittal slice caches."""

    n4_bins: int = mri_field(200)  # Otsu histogram bins for the N4 foreground mask
    n4_shrink_factor: int = mri_field(6)  # for 1 mm voxels: N4 fits on a ~6 mm grid (scaled by voxel size)
    n4_iterations: tuple[int, ...] = mri_field((30, 30, 20))
    n4_convergence: float = mri_field(1e-6)
    skull_strip: str = mri_field("hdbet")  # hdbet | deepbet
    hdbet_tta: bool = mri_field(True)
    hdbet_mode: str = mri_field("fast")  # fast: 1 network (fold 0) | accurate: 5 networks
    hdbet_tta_mirrors: str = mri_field("lr")  # TTA passes: lr = plain + left-right mirror | all = 8 mirrors
    hdbet_bf16: bool = mri_field(True)  # bfloat16 convolutions where the CPU/GPU supports them (2x faster on CPU)
    registration_metric: str = mri_field("mattes")  # also used by PET → MRI
    registration_voxel_mm: float = mri_field(2.0)  # the fixed image is resampled to this before registering
    registration_shrink: tuple[int, ...] = mri_field((4, 2))  # shrink factors of that 2 mm grid, per level
    registration_smoothing: tuple[float, ...] = mri_field((2.0, 1.0))  # voxels, one per shrink level
    registration_iterations: tuple[int, ...] = mri_field((100, 30))
    registration_sampling: float = mri_field(0.25)  # fraction of voxels sampled by the metric
    clip_percentiles: tuple[float, float] = mri_field((0.5, 99.5))
    gamma: float = mri_field(0.9)
    template_resolution: int = mri_field(1)  # mm, 1 or 2 (MNI152NLin2009aSym grid)
    pet_fwhm_mm: float = pet_field(8.0)
    # PET → MRI: the frame mean (before smoothing) is registered, with a finer last level
    pet_registration_shrink: tuple[int, ...] = pet_field((4, 2, 1))
    pet_registration_smoothing: tuple[float, ...] = pet_field((2.0, 1.0, 0.0))
    pet_registration_iterations: tuple[int, ...] = pet_field((100, 30, 10))
    suvr_reference: str = pet_field("WhlCbl")
    # Dynamic PET: the frames inside the tracer's late window (minutes after injection) make
    # the SUVR image, realigned first; see PET_WINDOWS_MIN. A [preproc.pet_windows] table
    # replaces the whole default table.
    pet_windows: dict[str, tuple[float, float]] = field(
        default_factory=lambda: dict(PET_WINDOWS_MIN), metadata={"stage": PET})
    # 4D PET without frame timing, or not covering its window: "fail", or
    # "average-available" (average what exists, with a warning and a QC flag)
    pet_window_policy: str = pet_field("average-available")
    pet_realign: bool = pet_field(True)  # rigidly realign the window's frames before averaging
    voi_registration: str = pet_field("affine")  # Centiloid VOIs onto the subject: affine | rigid
    n_slices: int = slice_field(40)
    slice_range: tuple[float, float] = slice_field((0.4, 0.6))
    min_slice_mean: float = slice_field(0.01)
    slice_size: int = slice_field(224)


def preproc_fields(stages: tuple[str, ...] | str) -> tuple[str, ...]:
    """Names of the ``[preproc]`` fields tagged with one of ``stages``.

    >>> preproc_fields(SLICE)
    ('n_slices', 'slice_range', 'min_slice_mean', 'slice_size')
    """
    wanted = (stages,) if isinstance(stages, str) else stages
    return tuple(f.name for f in dataclasses.fields(PreprocConfig)
                 if f.metadata.get("stage") in wanted)


def pet_only_parameters() -> tuple[str, ...]:
    """``[preproc]`` fields that concern PET only: an MRI output made with other values still fits."""
    return preproc_fields(PET)


def preproc_parameters(preproc: PreprocConfig, stages: tuple[str, ...]) -> dict[str, Any]:
    """The values of the fields tagged with ``stages``, in JSON form (:func:`config_to_dict`)."""
    keep = set(preproc_fields(stages))
    return {k: v for k, v in config_to_dict(preproc).items() if k in keep}


@dataclass(frozen=True)
class ModelConfig:
    """Backbone, LoRA and heads of teacher and student."""

    backbone: str = "biomedclip"  # or a timm ViT name, randomly initialised
    backbone_weights: str | None = None
    image_size: int = 224
    lora_r: int = 32
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_blocks: tuple[int, ...] = (6, 7, 8, 9, 10, 11)
    lora_targets: tuple[str, ...] = ("attn.qkv", "attn.proj")
    proj_hidden: int = 256
    embed_dim: int = 128
    teacher_proj_dropout: tuple[float, float] = (0.5, 0.4)
    student_proj_dropout: tuple[float, float] = (0.3, 0.2)
    attn_heads: int = 4
    attn_dropout: float = 0.1
    pool_temperature: float = 2.0
    cls_hidden: int = 64
    teacher_cls_dropout: float = 0.6
    student_cls_dropout: float = 0.4
    contrast_dropout: float = 0.3  # multi-contrast student: prob. of dropping a contrast
    clip_mean: tuple[float, float, float] = CLIP_MEAN
    clip_std: tuple[float, float, float] = CLIP_STD


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation, applied with identical parameters to each MRI/PET pair."""

    enabled: bool = True
    rotate_deg: float = 7.0
    translate: float = 0.05
    scale: tuple[float, float] = (0.95, 1.05)
    brightness: float = 0.1
    contrast: float = 0.1
    blur_kernel: int = 3
    blur_p: float = 0.3
    gamma: tuple[float, float] = (0.9, 1.1)
    gamma_p: float = 0.5
    noise_std: tuple[float, float] = (0.01, 0.03)
    noise_p: float = 0.5
    erase_p: float = 0.25
    erase_scale: tuple[float, float] = (0.05, 0.12)


@dataclass(frozen=True)
class PretrainConfig:
    """Phase 1: teacher pre-training with BCE."""

    lr: float = 2e-5
    weight_decay: float = 1e-3
    batch_size: int = 6
    accumulation: int = 1
    max_epochs: int = 30
    patience: int = 5
    clip_schedule: tuple[tuple[int, float], ...] = ((0, 1.0), (2, 2.0), (5, 5.0))
    pos_weight: float = 1.0


@dataclass(frozen=True)
class ContrastiveConfig:
    """Phase 2: Centiloid-aware triplet refinement of the teacher."""

    margin: float = 1.0
    cl_gap: float = 5.0
    norm_weight: float = 0.01
    collapse_threshold: float = 0.5
    negative_cos_offset: float = 0.1
    negative_cos_weight: float = 0.5
    lr_backbone: float = 5e-6
    wd_backbone: float = 1e-2
    lr_classifier: float = 2e-5
    wd_classifier: float = 5e-3
    t0: int = 5
    t_mult: int = 2
    eta_min: float = 1e-7
    batch_size: int = 6
    accumulation: int = 5
    max_epochs: int = 15
    patience: int = 3
    clip: float = 1.0
    val_f1_weight: float = 0.5
    val_triplet_weight: float = 0.1


REINIT_LAYERS = ("last", "all")  # [distill] reinit_layers


@dataclass(frozen=True)
class DistillConfig:
    """Phase 3: distillation into the MRI-only student."""

    focal_gamma: float = 2.0
    margin_start: float = 0.3
    margin_end: float = 1.2
    margin_step: float = 0.06
    margin_hold_epochs: int = 5
    gap_weight_early: float = 0.1
    gap_weight_late: float = 0.3
    gap_switch_epoch: int = 10
    gap_coef: float = 0.1  # gap term: gap_coef·relu(margin − logit gap)·gap weight
    temperature_start: float = 2.5
    temperature_end: float = 1.0
    temperature_step: float = 0.1
    temperature_hold_epochs: int = 5
    focal_weight: tuple[float, float] = (0.3, 0.4)
    feature_weight: tuple[float, float] = (0.5, 0.4)
    logit_weight: float = 0.2
    weight_ramp_epochs: int = 10
    lr_lora: float = 2e-4
    wd_lora: float = 0.0
    lr_projection: float = 1e-4
    wd_projection: float = 1e-4
    lr_heads: float = 1e-4
    wd_heads: float = 1e-3
    plateau_factor: float = 0.7
    plateau_patience: int = 15
    plateau_threshold: float = 0.005
    plateau_min_lr: float = 1e-5
    plateau_cooldown: int = 2
    batch_size: int = 10
    accumulation: int = 3
    max_epochs: int = 100
    patience: int = 25
    clip: float = 5.0
    # phase 3 counted in optimiser steps (train.phases.head_budget): with few steps the
    # Xavier draw of the re-initialised layer decides the ranking; 0 (zero start) for small cohorts
    reinit_gain: float = 0.5
    # "last" (the paper): only the classifier's output layer is re-drawn; "all" also re-draws
    # its first layer (Xavier, bias 0). The teacher's first layer was fitted to PET+MRI
    # embeddings: with a backbone trained from scratch most of its units are dead or flat on
    # the student's MRI-only embeddings and the head barely moves (benchmarks/student_probe.py)
    reinit_layers: str = "last"


@dataclass(frozen=True)
class TrainConfig:
    """What all phases share."""

    seed: int = 42
    n_train_slices: int = 25
    amp: bool = True
    deterministic: bool = False
    num_workers: int = 0
    device: str = "auto"
    threshold_grid: tuple[float, float, int] = (0.01, 0.99, 200)
    bootstrap: int = 1000
    ablate: tuple[str, ...] = ()  # no-pretrain | no-triplet | no-feature-kd | no-logit-kd | no-teacher
    pet_scale: float = 3.0  # PET SUVR / pet_scale → ~[0, 1], one global factor (never per slice)
    # screening operating points chosen on validation (evaluation.operating_points)
    rule_out_sensitivity: float = 0.90  # rule-out: highest threshold keeping sensitivity ≥ this
    rule_in_specificity: float = 0.90  # rule-in: lowest threshold keeping specificity ≥ this
    cv_folds: int = 0  # group --cv K: K outer folds over subjects, one run each (0: one split)


@dataclass(frozen=True)
class AppConfig:
    """The whole resolved configuration of a run."""

    cohort: CohortConfig = field(default_factory=CohortConfig)
    preproc: PreprocConfig = field(default_factory=PreprocConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class ConfigError(ValueError):
    """A configuration file or override names an unknown key, a wrong type or a bad value."""


# Settings removed because they steered nothing; files written before (model files)
# may still hold them: their only supported value is accepted and dropped.
RETIRED = {("preproc", "registration"): "rigid", ("preproc", "template_space"): TEMPLATE_SPACE}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert a TOML value to the dataclass field's type (lists → tuples)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return {str(k): _coerce(v, args[1], where) for k, v in value.items()}
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got {value!r}")
    return value


def _replace(section: Any, values: dict[str, Any], name: str) -> Any:
    retired = [k for k in values if (name, k) in RETIRED]
    for key in retired:
        if values[key] != RETIRED[(name, key)]:
            raise ConfigError(f"{name}.{key}: {values[key]!r} is not supported; the pipeline "
                              f"always uses {RETIRED[(name, key)]!r} (the setting was removed)")
    values = {k: v for k, v in values.items() if k not in retired}
    hints = typing.get_type_hints(type(section))
    known = {f.name for f in dataclasses.fields(section)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"[{name}] has no setting {', '.join(unknown)}")
    coerced = {k: _coerce(v, hints[k], f"{name}.{k}") for k, v in values.items()}
    return dataclasses.replace(section, **coerced)


def apply_overrides(cfg: AppConfig, overrides: dict[str, dict[str, Any]]) -> AppConfig:
    """Return ``cfg`` with ``{section: {key: value}}`` applied, types checked."""
    sections = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(overrides) - sections)
    if unknown:
        raise ConfigError(f"unknown configuration section(s): {', '.join(unknown)}")
    changes = {
        name: _replace(getattr(cfg, name), values, name)
        for name, values in overrides.items()
        if values
    }
    return dataclasses.replace(cfg, **changes)


def load_config(path: Path | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> AppConfig:
    """Defaults, then the TOML file at ``path``, then ``overrides`` (keys and types checked).

    A run loads its configuration with :func:`bids_amyloid.config_checks.load_run_config`,
    which also checks the values.
    """
    cfg = AppConfig()
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"cannot read configuration file {path}: {err}") from err
        cfg = apply_overrides(cfg, data)
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists, None values dropped) for TOML/JSON."""

    def clean(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if v is not None}
        return value

    return clean(dataclasses.asdict(cfg))


def config_from_dict(data: dict[str, Any]) -> AppConfig:
    """Inverse of :func:`config_to_dict`."""
    return apply_overrides(AppConfig(), data)


def dump_config(cfg: AppConfig) -> str:
    """The resolved configuration as TOML text."""
    import tomli_w

    return tomli_w.dumps(config_to_dict(cfg))
