"""Unit tests of the training pieces: losses, mining, schedules, metrics, sampler, augmentation, data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from train_fixtures import CANDIDATES, synthetic_run

from bids_amyloid.config import AugmentConfig, ContrastiveConfig, DistillConfig, PretrainConfig
from bids_amyloid.evaluation import auc_with_ci, best_threshold, binary_metrics
from bids_amyloid.train import losses, schedules
from bids_amyloid.train.augment import augment_sample_images, augment_stack
from bids_amyloid.train.data import (
    SliceCacheDataset,
    WeightedEpochSampler,
    check_caches,
    class_weights,
    even_positions,
)
from bids_amyloid.train.mining import ANY, FARTHEST, GAP, NegativePool


def _bce(x: float, y: float) -> float:
    p = 1 / (1 + math.exp(-x))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


# -- losses ---------------------------------------------------------------------------------
def test_bce_matches_hand_value():
    got = losses.bce_loss(torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.0]))
    assert float(got) == pytest.approx((_bce(2.0, 1) + _bce(-1.0, 0)) / 2, rel=1e-6)
    weighted = losses.bce_loss(torch.tensor([0.0]), torch.tensor([1.0]), pos_weight=2.0)
    assert float(weighted) == pytest.approx(2 * math.log(2), rel=1e-6)


def test_contrastive_terms_hand_values():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    n = torch.tensor([[0.0, 1.0], [0.0, -1.0]])
    logits, labels = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0])
    out = losses.contrastive_terms(a, p, n, logits, labels, margin=1.0, norm_weight=0.01, s=0.5)
    # d(a,p) = [0, 1]; d(a,n) = [sqrt 2, 2] → relu(0 - 1.414 + 1)=0, relu(1 - 2 + 1)=0
    assert float(out["triplet"]) == pytest.approx(0.0, abs=1e-6)
    assert float(out["bce"]) == pytest.approx(math.log(2), rel=1e-6)
    # mean‖a‖ + mean‖p‖ + mean‖n‖ = (1+1)/2 + (1+2)/2 + (1+1)/2 = 3.5 (a sum of three means)
    assert float(out["norm"]) == pytest.approx(3.5, rel=1e-6)
    # anchors orthogonal: off-diagonal cosine 0 → no collapse penalty
    assert float(out["collapse"]) == pytest.approx(0.0, abs=1e-6)
    # cos(a, n) = [0, -1] → mean −0.5 → relu(−0.4) = 0
    assert float(out["neg_cos"]) == pytest.approx(0.0, abs=1e-6)
    assert float(out["valid"]) == 1.0
    total = math.log(2) + 0.01 * 3.5
    assert float(out["loss"]) == pytest.approx(total, rel=1e-6)


def test_contrastive_penalties_carry_gradient():
    a = torch.tensor([[1.0, 0.1], [1.0, 0.0], [0.9, 0.1]], requires_grad=True)
    n = torch.tensor([[1.0, 0.0], [1.0, 0.1], [1.0, 0.0]])
    p = a.detach().clone()
    out = losses.contrastive_terms(a, p, n, torch.zeros(3), torch.zeros(3), margin=1.0,
                                   norm_weight=0.0, s=1.0)
    assert float(out["collapse"].detach()) > 0.4 and float(out["neg_cos"].detach()) > 1.0
    penalty = out["collapse"] + 0.5 * out["neg_cos"]
    penalty.backward()
    assert a.grad is not None and float(a.grad.abs().sum()) > 0
    # collapse term by hand: all anchors nearly parallel
    unit = torch.nn.functional.normalize(a.detach(), dim=1)
    sim = unit @ unit.T
    mean_off = (sim.sum() - sim.diag().sum()) / 6
    assert float(out["collapse"].detach()) == pytest.approx(float(mean_off) - 0.5, rel=1e-5)


def test_triplet_term_hand_value():
    a, p, n = torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]])
    out = losses.contrastive_terms(a, p, n, torch.zeros(1), torch.ones(1), margin=1.0,
                                   norm_weight=0.0, s=0.0)
    assert float(out["triplet"]) == pytest.approx(5.0 - 1.0 + 1.0)
    assert float(out["valid"]) == 0.0


def test_margin_focal_hand_value():
    logits, labels = torch.tensor([1.0, -0.5]), torch.tensor([1.0, 0.0])
    out = losses.margin_focal_loss(logits, labels, margin=0.3, gamma=2.0, gap_weight=0.3)
    expected = []
    for x, y in ((1.0 - 0.3, 1), (-0.5 + 0.3, 0)):
        p = 1 / (1 + math.exp(-x))
        pt = p if y else 1 - p
        expected.append((1 - pt) ** 2 * _bce(x, y))
    assert float(out["focal"]) == pytest.approx(sum(expected) / 2, rel=1e-6)
    # logit gap 1.5 > margin 0.3 → no gap term
    assert float(out["gap"]) == pytest.approx(0.0)
    close = losses.margin_focal_loss(torch.tensor([0.2, 0.1]), labels, margin=1.2, gamma=2.0,
                                     gap_weight=0.3)
    assert float(close["gap"]) == pytest.approx(0.1 * (1.2 - 0.1) * 0.3, rel=1e-6)
    one_class = losses.margin_focal_loss(torch.tensor([0.2, 0.1]), torch.ones(2), margin=1.2,
                                         gamma=2.0, gap_weight=0.3)
    assert float(one_class["gap"]) == 0.0


def test_feature_and_logit_kd_hand_values():
    s = torch.tensor([[3.0, 4.0]], requires_grad=True)
    t = torch.tensor([[1.0, 0.0]], requires_grad=True)
    feat = losses.feature_kd_loss(s, t)
    assert float(feat) == pytest.approx(((0.6 - 1) ** 2 + 0.8**2) / 2, rel=1e-6)
    feat.backward()
    assert t.grad is None and s.grad is not None  # teacher detached
    kd = losses.logit_kd_loss(torch.tensor([1.0]), torch.tensor([2.0]), temperature=2.0)
    q = 1 / (1 + math.exp(-1.0))
    p = 1 / (1 + math.exp(-0.5))
    bce = -(q * math.log(p) + (1 - q) * math.log(1 - p))
    assert float(kd) == pytest.approx(bce * 4.0, rel=1e-6)


# -- mining ---------------------------------------------------------------------------------
def test_mining_gap_rule_and_fallbacks():
    rng = np.random.default_rng(0)
    pool = NegativePool(["a", "a", "b", "c", "d"], [10.0, 40.0, 12.0, 13.0, 60.0])
    for _ in range(20):
        idx, kind = pool.mine_one("a", 10.0, gap=5.0, rng=rng)
        assert kind == GAP and idx == 4           # only d is ≥ 5 CL away among other subjects
    idx, kind = pool.mine_one("d", 60.0, gap=5.0, rng=rng)
    assert kind == GAP and idx in (0, 1, 2, 3)
    # nobody at ≥ 100 CL: fallback 1 = farthest other subject
    idx, kind = pool.mine_one("a", 10.0, gap=100.0, rng=rng)
    assert (idx, kind) == (4, FARTHEST)
    # gap 0 accepts everyone else, never the same subject
    picks = {pool.mine_one("b", 12.0, gap=0.0, rng=rng)[0] for _ in range(50)}
    assert picks == {0, 1, 3, 4}
    nan_pool = NegativePool(["a", "b", "c"], [10.0, float("nan"), float("nan")])
    idx, kind = nan_pool.mine_one("a", 10.0, gap=5.0, rng=rng)
    assert kind == ANY and idx in (1, 2)
    with pytest.raises(ValueError, match="two subjects"):
        NegativePool(["a", "a"], [1.0, 50.0])


def test_mining_batch_uses_pool_indices():
    pool = NegativePool(["a", "b", "c"], [0.0, 50.0, 3.0])
    idx, kinds = pool.mine([0, 1, 2], gap=5.0, rng=np.random.default_rng(1))
    assert idx[0] == 1 and kinds == [GAP, GAP, GAP] and idx[2] == 1 and idx[1] in (0, 2)


# -- schedules ------------------------------------------------------------------------------
def test_clip_schedule():
    sched = PretrainConfig().clip_schedule
    assert [schedules.clip_norm(sched, e) for e in (0, 1, 2, 4, 5, 29)] == [1, 1, 2, 2, 5, 5]


def test_anticollapse_schedule():
    vals = {e: schedules.anticollapse_weight(e) for e in (0, 2, 3, 4, 5, 11, 12, 14)}
    assert vals[0] == vals[2] == pytest.approx(0.1)
    assert vals[3] == pytest.approx(0.1) and vals[4] == pytest.approx(0.2)
    assert vals[5] == pytest.approx(0.3) and vals[11] == pytest.approx(0.9)
    assert vals[12] == vals[14] == 1.0
    _ = ContrastiveConfig()


def test_distill_schedules():
    d = DistillConfig()
    assert schedules.focal_margin(d, 0) == schedules.focal_margin(d, 4) == pytest.approx(0.3)
    assert schedules.focal_margin(d, 6) == pytest.approx(0.36)
    assert schedules.focal_margin(d, 20) == pytest.approx(1.2)
    assert schedules.focal_margin(d, 50) == pytest.approx(1.2)
    assert schedules.kd_temperature(d, 4) == pytest.approx(2.5)
    assert schedules.kd_temperature(d, 6) == pytest.approx(2.4)
    assert schedules.kd_temperature(d, 20) == pytest.approx(1.0)
    assert schedules.kd_temperature(d, 99) == pytest.approx(1.0)
    assert schedules.gap_weight(d, 9) == 0.1 and schedules.gap_weight(d, 10) == 0.3
    assert schedules.loss_weights(d, 0) == pytest.approx((0.3, 0.5, 0.2))
    assert schedules.loss_weights(d, 5) == pytest.approx((0.35, 0.45, 0.2))
    assert schedules.loss_weights(d, 10) == pytest.approx((0.4, 0.4, 0.2))
    assert schedules.loss_weights(d, 60) == pytest.approx((0.4, 0.4, 0.2))


# -- metrics --------------------------------------------------------------------------------
def test_binary_metrics_by_hand():
    m = binary_metrics([1, 1, 0, 0, 0], [0.9, 0.4, 0.6, 0.2, 0.1], 0.5)
    assert m["precision"] == 0.5 and m["recall"] == 0.5 and m["f1"] == 0.5
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["specificity"] == pytest.approx(2 / 3) and m["npv"] == pytest.approx(2 / 3)
    strict = binary_metrics([1], [0.5], 0.5)  # positive only if p > τ
    assert strict["recall"] == 0.0


def test_best_threshold_skips_single_class():
    labels, probs = [0, 0, 1, 1], [0.2, 0.3, 0.6, 0.7]
    tau = best_threshold(labels, probs)
    assert 0.3 <= tau < 0.6
    assert binary_metrics(labels, probs, tau)["f1"] == 1.0
    assert best_threshold([0, 1], [0.5, 0.5]) == 0.5  # constant: nothing separates


def test_auc_ci_resamples_subjects():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1] * 10, 2)
    probs = np.clip(labels * 0.3 + rng.uniform(0, 0.7, labels.size), 0, 1)
    subjects = np.repeat([f"s{i}" for i in range(20)], 2)
    value, low, high = auc_with_ci(labels, probs, subjects, n_boot=200, seed=1)
    assert low <= value <= high and 0.5 < value <= 1
    assert auc_with_ci(labels, probs, subjects, n_boot=200, seed=1) == (value, low, high)
    # a subject's sessions move together: with one subject per class the CI is degenerate
    single = auc_with_ci([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], ["a", "a", "b", "b"], n_boot=50)
    assert single[0] == 1.0 and single[1] == single[2] == 1.0


# -- sampler --------------------------------------------------------------------------------
def test_weighted_sampler_balances_and_shards():
    labels = [0] * 18 + [1] * 2
    w = class_weights(labels)
    assert float(w[0]) == pytest.approx(1 / 18) and float(w[-1]) == pytest.approx(1 / 2)
    sampler = WeightedEpochSampler(labels, seed=3, num_samples=4000)
    drawn = np.asarray(list(sampler))
    frac = np.isin(drawn, [18, 19]).mean()
    assert 0.45 < frac < 0.55
    ranks = [WeightedEpochSampler(labels, seed=3, rank=r, world=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(5)
    a, b = list(ranks[0]), list(ranks[1])
    assert len(a) == len(b) == 10
    full = WeightedEpochSampler(labels, seed=3)
    full.set_epoch(5)
    assert sorted(a + b) == sorted(full.draw().tolist())
    other = WeightedEpochSampler(labels, seed=3)
    other.set_epoch(6)
    assert other.draw().tolist() != full.draw().tolist()


# -- augmentation ---------------------------------------------------------------------------
def test_augment_one_draw_per_slice_shared_by_its_mri_contrasts_and_pet():
    base = 0.1 + 0.8 * torch.rand(3, 1, 24, 24)      # every slice of a sample is the same image
    images = {k: base.repeat(1, 4, 1, 1).clone() for k in ("mri:T1w", "mri:T2w", "pet")}
    cfg = AugmentConfig(noise_p=0.0, brightness=0.0, contrast=0.0)  # no per-pixel noise
    out = augment_sample_images(images, cfg, torch.Generator().manual_seed(0),
                                clamped=("mri:T1w", "mri:T2w"))
    # slice j of the MRI contrasts and of the PET got one draw: they stay identical
    assert torch.equal(out["mri:T1w"], out["pet"]) and torch.equal(out["mri:T2w"], out["pet"])
    assert not torch.allclose(out["pet"], images["pet"])
    # each slice has its own draw: identical input slices come out different
    for j in range(1, 4):
        for i in range(3):
            assert not torch.allclose(out["pet"][i, 0], out["pet"][i, j]), (i, j)
    assert not torch.allclose(out["pet"][0], out["pet"][1])


def test_augment_clamps_mri_but_never_pet():
    g = torch.Generator().manual_seed(0)              # inputs fixed: not the suite's RNG state
    mri = torch.rand(2, 3, 20, 20, generator=g)
    pet = 3.0 * torch.rand(2, 3, 20, 20, generator=g)  # scaled SUVR goes well above 1
    pet[..., :4, :] = 0.0                              # background outside the head
    cfg = AugmentConfig(noise_p=1.0, gamma_p=1.0, erase_p=0.0)
    out = augment_sample_images({"mri:T1w": mri, "pet": pet}, cfg,
                                torch.Generator().manual_seed(1), clamped=("mri:T1w",))
    assert float(out["mri:T1w"].min()) >= 0.0 and float(out["mri:T1w"].max()) <= 1.0
    assert float(out["pet"].max()) > 2.0               # high uptake is not cut at 1
    assert float(out["pet"].min()) < 0.0               # noise below 0 is kept too
    assert bool(torch.isfinite(out["pet"]).all())      # gamma of a negative value stays finite
    with pytest.raises(ValueError, match="not image sets"):
        augment_sample_images({"pet": pet}, cfg, torch.Generator(), clamped=("mri:T1w",))


def test_augment_range_shape_and_reproducible():
    x = torch.rand(4, 6, 20, 20)
    cfg = AugmentConfig(erase_p=1.0, noise_p=1.0, blur_p=1.0, gamma_p=1.0)
    bounded = torch.ones(6, dtype=torch.bool)
    a = augment_stack(x, cfg, torch.Generator().manual_seed(5), bounded)
    b = augment_stack(x, cfg, torch.Generator().manual_seed(5), bounded)
    assert a.shape == x.shape and torch.equal(a, b)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert (a == 0).flatten(1).any(dim=1).all()  # every row has an erased box
    assert torch.equal(augment_stack(x, AugmentConfig(enabled=False), torch.Generator(), bounded), x)


# -- data -----------------------------------------------------------------------------------
def test_even_positions():
    assert even_positions(40, 25)[0] == 0 and even_positions(40, 25)[-1] == 39
    assert len(even_positions(40, 25)) == 25 and even_positions(3, 25) == [0, 1, 2]


def test_dataset_reads_mmapped_caches_and_pet_at_mri_indices(tmp_path):
    out = tmp_path / "out"
    _, cohort = synthetic_run(out, n_subjects=5, contrasts=("T1w", "T2w"), size=16, n_kept=10)
    usable, missing = check_caches(cohort, out, ("T1w", "T2w"))
    assert len(usable) == len(cohort) and missing.empty
    ds = SliceCacheDataset(usable, out, ("T1w", "T2w"), n_slices=4, pet_scale=2.0)
    item = ds[0]
    assert item["mri"]["T1w"].shape == (4, 16, 16) and item["mri_mask"]["T2w"].all()
    _, indices = ds.mri_rows(0, "T1w")
    assert indices == sorted(indices) and len(indices) == 4
    pet_raw = np.load(ds.paths[0].pet)
    expected = pet_raw[[CANDIDATES.index(i) for i in indices]].astype(np.float32) / 2.0
    assert np.allclose(item["pet"].numpy(), expected, rtol=2e-3)
    assert all(isinstance(a, np.memmap) for a, _ in ds._maps.values())
    padded = SliceCacheDataset(usable, out, ("T1w",), n_slices=15)[0]
    assert padded["mri_mask"]["T1w"].sum() == 10 and not padded["mri_mask"]["T1w"][10:].any()
    assert float(padded["mri"]["T1w"][10:].abs().sum()) == 0.0
    ds.paths[0].mri["T2w"].unlink()
    usable2, missing2 = check_caches(cohort, out, ("T1w", "T2w"))
    assert len(missing2) == 1 and "T2w" in missing2["reason"].iloc[0]
    assert len(usable2) == len(cohort) - 1


def test_selection_tie_break():
    from bids_amyloid.train.loop import improved

    assert improved(0.0, 0.6, None, None)
    assert improved(0.0, 0.7, 0.0, 0.6)          # F1 flat, AUC better
    assert not improved(0.0, 0.5, 0.0, 0.6)
    assert improved(0.1, 0.1, 0.0, 0.9)          # primary score wins
    assert not improved(float("nan"), float("nan"), 0.0, 0.5)


def test_plan_and_teacher_settings_checks(tmp_path):
    from bids_amyloid.config import AppConfig
    from bids_amyloid.derivatives import student_file
    from bids_amyloid.errors import UsageError
    from bids_amyloid.train.plan import check_teacher_config, plan_phases

    assert plan_phases("all", (), False) == ["pretrain", "contrastive", "distill"]
    assert plan_phases("all", ("no-triplet",), False) == ["pretrain", "distill"]
    assert plan_phases("all", (), True) == ["distill"]
    with pytest.raises(UsageError):
        plan_phases("pretrain", (), True)
    with pytest.raises(UsageError):
        plan_phases("pretrain", ("no-pretrain",), False)
    assert student_file(("T1w", "T2w"), "best-cosine") == "student_T1w+T2w_best-cosine.pt"
    assert plan_phases("all", ("no-teacher",), False) == ["distill"]
    assert plan_phases("distill", ("no-teacher", "no-logit-kd"), False) == ["distill"]
    for stage, teacher in (("all", True), ("pretrain", False), ("contrastive", False)):
        with pytest.raises(UsageError, match="no-teacher"):
            plan_phases(stage, ("no-teacher",), teacher)
    cfg = AppConfig()
    check_teacher_config(tmp_path, {"model": {"backbone": "biomedclip", "image_size": 224}}, cfg)
    with pytest.raises(UsageError, match="image_size"):
        check_teacher_config(tmp_path, {"model": {"image_size": 32}}, cfg)


def test_distill_net_keeps_teacher_frozen_in_eval_mode():
    from bids_amyloid.config import AppConfig, ModelConfig
    from bids_amyloid.models import build_student, build_teacher, prepare_slices
    from bids_amyloid.train.nets import DistillNet

    cfg = AppConfig(model=ModelConfig(backbone="test_vit", image_size=32))
    torch.manual_seed(0)
    teacher = build_teacher(cfg, ("T1w",))
    student = build_student(cfg, ("T1w",))
    student.init_from_teacher(teacher)
    net = DistillNet(student, teacher, ("T1w",), cfg).train()
    assert not teacher.training and student.training
    images = prepare_slices(torch.rand(2, 3, 32, 32))
    mask = torch.ones(2, 3, dtype=torch.bool)
    batch = {"mri": {"T1w": images}, "mri_mask": {"T1w": mask}, "pet": images.clone(),
             "pet_mask": mask, "label": torch.tensor([0.0, 1.0]), "student_mri": {"T1w": images},
             "student_mask": {"T1w": mask}, "margin": 0.3, "temperature": 2.5,
             "gap_weight": 0.1, "weights": (0.3, 0.5, 0.2)}
    out = net(batch)
    out["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in student.parameters())
    assert float(out["feature_kd"]) >= 0 and float(out["logit_kd"]) > 0


# -- the loop: phase-2 warm restarts count epochs ---------------------------------------------
class _LinearTask:
    """The smallest task the loop runs: a 2→1 linear model, phase 2's optimiser and scheduler."""

    name, max_epochs, patience, accumulation = "contrastive", 16, 100, 2
    selections, tie_breaks, scheduler_mode = ("score",), {}, "step"

    def __init__(self) -> None:
        from bids_amyloid.config import AppConfig

        self.cfg = AppConfig()
        self.model = torch.nn.Linear(2, 1)
        self.net = self

    def __call__(self, batch):
        loss = torch.nn.functional.mse_loss(self.model(batch["x"]).squeeze(-1), batch["label"])
        return {"loss": loss}

    def make_optimizer(self):
        return torch.optim.AdamW([{"name": "all", "params": self.model.parameters(), "lr": 1e-3}])

    def make_scheduler(self, optimizer):
        from types import SimpleNamespace

        from bids_amyloid.train.phases import ContrastivePhase

        return ContrastivePhase.make_scheduler(SimpleNamespace(ctx=SimpleNamespace(cfg=self.cfg)),
                                               optimizer)

    def clip(self, epoch):
        return 1.0

    def schedule_values(self, epoch):
        return {}

    def train_mode(self):
        self.model.train()

    def prepare(self, batch, epoch, rngs):
        return batch

    def validate(self, epoch):
        return {"score": float(epoch)}


def test_phase2_warm_restarts_count_epochs_not_steps(tmp_path):
    from torch.utils.data import DataLoader

    from bids_amyloid.train.loop import LoopSettings, Trainer, TrainingLog

    data = [{"x": torch.randn(2), "label": torch.tensor(float(i % 2))} for i in range(14)]
    loader = DataLoader(data, batch_size=2)          # 7 batches → 4 optimiser steps per epoch
    trainer = Trainer(_LinearTask(), loader, LoopSettings(device=torch.device("cpu"), amp=False),
                      tmp_path, TrainingLog(None))
    history = trainer.fit().history
    # T_0 = 5 epochs, T_mult = 2: restarts at epochs 0, 5 and 15; (epochs into the cycle, cycle length)
    cycle = [(e, 5) for e in range(5)] + [(e, 10) for e in range(10)] + [(0, 20)]
    base, eta = 1e-3, 1e-7
    expected = [eta + (base - eta) * (1 + math.cos(math.pi * t / length)) / 2
                for t, length in cycle]
    assert [row["lr_all"] for row in history] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert history[10]["lr_all"] == pytest.approx((base + eta) / 2)   # half-way through cycle 2


def test_student_without_teacher_learns_from_its_classification_loss_alone():
    from bids_amyloid.config import AppConfig, ModelConfig
    from bids_amyloid.models import build_student, prepare_slices
    from bids_amyloid.train.nets import DistillNet

    cfg = AppConfig(model=ModelConfig(backbone="test_vit", image_size=32))
    torch.manual_seed(0)
    student = build_student(cfg, ("T1w",))
    net = DistillNet(student, None, ("T1w",), cfg).eval()        # eval: no dropout
    images = prepare_slices(torch.rand(2, 3, 32, 32))
    mask = torch.ones(2, 3, dtype=torch.bool)
    labels = torch.tensor([0.0, 1.0])
    batch = {"mri": {"T1w": images}, "mri_mask": {"T1w": mask}, "label": labels,
             "student_mri": {"T1w": images}, "student_mask": {"T1w": mask}, "margin": 0.3,
             "temperature": 2.5, "gap_weight": 0.1, "weights": (0.3, 0.5, 0.2)}  # no PET given
    out = net(batch)
    assert set(out) == {"loss", "focal", "gap"}
    logits = student({"T1w": images}, {"T1w": mask}).logit
    focal = losses.margin_focal_loss(logits, labels, margin=0.3, gamma=2.0, gap_weight=0.1)
    assert float(out["loss"]) == pytest.approx(0.3 * float(focal["loss"]), rel=1e-5)
    out["loss"].backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in student.parameters())


def test_roc_figure_of_a_single_class_split_says_so_without_warnings():
    """A test split holding one class (possible on a small cohort) draws no curve: the figure
    says so instead of asking matplotlib for an empty legend (a UserWarning before)."""
    import warnings

    import pandas as pd

    from bids_amyloid.train.report import roc_test_figure

    preds = pd.DataFrame({"model": ["student_T1w"] * 3, "split": ["test"] * 3,
                          "label": [1, 1, 1], "probability": [0.2, 0.6, 0.9]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        png = roc_test_figure(preds)
    assert png is not None and png.startswith(b"\x89PNG")
