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
