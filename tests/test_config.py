"""Configuration: paper defaults, TOML overrides, type checks, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from bids_amyloid.config import (
    AppConfig,
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
)


def test_paper_defaults() -> None:
    cfg = AppConfig()
    assert cfg.cohort.centiloid_threshold == 20.6
    assert cfg.cohort.pair_window_days == 365
    assert (cfg.cohort.n_folds, cfg.cohort.split_seed) == (5, 42)
    assert cfg.model.lora_blocks == (6, 7, 8, 9, 10, 11)
    assert (cfg.model.lora_r, cfg.model.lora_alpha, cfg.model.lora_dropout) == (32, 32, 0.1)
    assert cfg.pretrain.lr == 2e-5 and cfg.pretrain.batch_size == 6
    assert cfg.contrastive.accumulation == 5 and cfg.contrastive.max_epochs == 15
    assert cfg.distill.batch_size == 10 and cfg.distill.patience == 25
    assert cfg.preproc.n_slices == 40 and cfg.train.n_train_slices == 25


def test_toml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[cohort]\npair_window_days = 180\ncontrasts = ["T1w", "T2w"]\n'
                    "[distill]\nmax_epochs = 3\n")
    cfg = load_config(path, {"distill": {"max_epochs": 5}})
    assert cfg.cohort.pair_window_days == 180
    assert cfg.cohort.contrasts == ("T1w", "T2w")
    assert cfg.distill.max_epochs == 5


def test_int_accepted_for_float_and_tables() -> None:
    cfg = apply_overrides(AppConfig(), {"cohort": {"centiloid_threshold": 20,
                                                   "tracer_thresholds": {"PIB": 16.4}}})
    assert isinstance(cfg.cohort.centiloid_threshold, float)
    assert cfg.cohort.tracer_thresholds == {"PIB": 16.4}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"cohort": {"no_such_key": 1}}, "no_such_key"),
        ({"nosection": {"x": 1}}, "nosection"),
        ({"cohort": {"pair_window_days": "a year"}}, "pair_window_days"),
        ({"cohort": {"pair_window_days": True}}, "pair_window_days"),
        ({"preproc": {"clip_percentiles": [1.0]}}, "clip_percentiles"),
    ],
)
def test_bad_overrides_are_named(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        apply_overrides(AppConfig(), overrides)


def test_unreadable_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[cohort\n")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load_config(path)


def test_round_trip_through_toml(tmp_path: Path) -> None:
    cfg = apply_overrides(AppConfig(), {"model": {"backbone": "vit_tiny_patch16_224"},
                                        "train": {"ablate": ["no-triplet"]}})
    path = tmp_path / "resolved.toml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg


# --------------------------------------------------------------------------- [preproc] stage tags


def test_every_preproc_field_is_tagged_once() -> None:
    import dataclasses

    from bids_amyloid.config import PREPROC_STAGES, PreprocConfig, preproc_fields

    names = [f.name for f in dataclasses.fields(PreprocConfig)]
    untagged = [f.name for f in dataclasses.fields(PreprocConfig)
                if f.metadata.get("stage") not in PREPROC_STAGES]
    assert untagged == [], f"tag these [preproc] fields with mri_field/pet_field/slice_field: {untagged}"
    by_stage = [n for stage in PREPROC_STAGES for n in preproc_fields(stage)]
    assert sorted(by_stage) == sorted(names)  # each field in exactly one stage


def test_pet_only_parameters_come_from_the_tags() -> None:
    from bids_amyloid.config import pet_only_parameters

    pet_only = set(pet_only_parameters())
    # the hand-kept list predict had, plus the PET → MRI registration levels it missed
    assert {"pet_fwhm_mm", "suvr_reference", "pet_registration_shrink",
            "pet_registration_smoothing", "pet_registration_iterations"} <= pet_only
    # settings every MRI output depends on are never PET-only
    assert not pet_only & {"gamma", "skull_strip", "n4_bins", "registration_metric",
                           "clip_percentiles", "n_slices", "min_slice_mean"}


@pytest.mark.parametrize(("section", "key", "value", "mri_changes"), [
    ("preproc", "pet_fwhm_mm", 6.0, False),
    ("preproc", "pet_registration_iterations", [50, 20, 5], False),
    ("preproc", "suvr_reference", "CerebGry", False),
    ("preproc", "gamma", 0.8, True),
    ("preproc", "skull_strip", "deepbet", True),
    ("preproc", "n_slices", 30, True),  # slice caches are MRI outputs too
])
def test_restart_hash_per_modality(section: str, key: str, value: object,
                                   mri_changes: bool) -> None:
    from bids_amyloid.participant.outputs import parameter_hash

    base = AppConfig()
    changed = apply_overrides(base, {section: {key: value}})
    assert parameter_hash(changed, "pet") != parameter_hash(base, "pet")
    assert (parameter_hash(changed, "mri") != parameter_hash(base, "mri")) is mri_changes


# --------------------------------------------------------------------------- values checked at load


@pytest.mark.parametrize(("toml", "key"), [
    ('[preproc]\nskull_strip = "bet"\n', "preproc.skull_strip"),
    ('[preproc]\nhdbet_mode = "slow"\n', "preproc.hdbet_mode"),
    ('[preproc]\nsuvr_reference = "Cerebellum"\n', "preproc.suvr_reference"),
    ("[preproc]\ngamma = 0\n", "preproc.gamma"),
    ("[preproc]\nregistration_sampling = 1.5\n", "preproc.registration_sampling"),
    ("[preproc]\ntemplate_resolution = 3\n", "preproc.template_resolution"),
    ("[preproc]\nregistration_shrink = [4]\n", "preproc.registration_shrink"),
    ("[preproc]\npet_registration_iterations = [100, 30]\n", "preproc.pet_registration_shrink"),
    ("[preproc]\nclip_percentiles = [99.5, 0.5]\n", "preproc.clip_percentiles"),
    ("[preproc]\nslice_range = [0.4, 1.2]\n", "preproc.slice_range"),
    ("[preproc]\nn_slices = 0\n", "preproc.n_slices"),
    ('[preproc]\npet_window_policy = "all"\n', "preproc.pet_window_policy"),
    ('[preproc]\nvoi_registration = "syn"\n', "preproc.voi_registration"),
    ("[preproc.pet_windows]\nPIB = [70, 50]\n", "preproc.pet_windows.PIB"),
    ('[preproc]\nregistration = "affine"\n', "preproc.registration"),
    ('[preproc]\ntemplate_space = "MNI152NLin6Asym"\n', "preproc.template_space"),
    ('[distill]\nreinit_layers = "first"\n', "distill.reinit_layers"),
    ('[cohort]\nsuvr_equation = "nope"\n', "cohort.suvr_equation"),
    ("[cohort]\ntest_fold = 0\n", "test_fold"),
    ('[cohort]\ncontrasts = ["T1"]\n', "T1"),
])
def test_bad_values_fail_at_load_naming_the_key(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    from bids_amyloid.config_checks import load_run_config

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_run_config(path)


def test_retired_settings_with_their_only_value_still_load() -> None:
    """Model files written before ``registration``/``template_space`` were removed."""
    old = {"preproc": {"registration": "rigid", "template_space": "MNI152NLin2009aSym",
                       "gamma": 0.8}}
    assert config_from_dict(old) == apply_overrides(AppConfig(), {"preproc": {"gamma": 0.8}})


def test_bad_value_stops_the_cli_before_any_work(tmp_path: Path) -> None:
    from bids_amyloid.cli import main
    from bids_amyloid.errors import EXIT_USAGE
    from tests.bids_builders import simple_dataset

    bids = simple_dataset(tmp_path / "bids").root
    conf = tmp_path / "bad.toml"
    conf.write_text('[preproc]\nskull_strip = "bet"\n')
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--skip-bids-validation",
                 "--config", str(conf)])
    assert code == EXIT_USAGE
    assert not out.exists()
