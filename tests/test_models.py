"""Backbone loading, LoRA, teacher/student networks, masks and safe model files.

Backbones here are small timm ViTs: ``test_vit`` (6 blocks, 64 wide, randomly
initialised) for the networks, and ``vit_tiny_patch16_224`` saved in open_clip's
on-disk format for the real BiomedCLIP loading path.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bids_amyloid.config import CLIP_MEAN, CLIP_STD, AppConfig, ModelConfig
from bids_amyloid.models import (
    BackboneWeightsError,
    ModelFileError,
    build_backbone,
    build_student,
    build_teacher,
    drop_contrasts,
    load_model,
    prepare_slices,
    read_model_file,
    save_model,
)
from bids_amyloid.models.backbone import WEIGHTS_ENV, create_trunk
from bids_amyloid.models.lora import apply_lora, lora_block_indices, lora_parameters

SIZE = 224
TINY = AppConfig(model=ModelConfig(backbone="test_vit"))


@pytest.fixture(autouse=True)
def _no_ambient_weights(monkeypatch, tmp_path_factory):
    """No test may find weights in the user's environment or Hugging Face cache."""
    import huggingface_hub.constants

    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE",
                        str(tmp_path_factory.mktemp("empty-hf-cache")))


def save_open_clip(folder: Path, seed: int, fmt: str = "bin") -> torch.nn.Module:
    """Write a small open_clip CLIP (timm ViT vision tower) the way its hub folders look."""
    import open_clip

    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                       "timm_pool": "", "timm_proj": "linear", "image_size": SIZE},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
    }
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg).eval()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": model_cfg, "preprocess_cfg": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)}}))
    if fmt == "bin":
        torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(folder / "open_clip_model.safetensors"))
    return model


@pytest.fixture(scope="module")
def open_clip_dir(tmp_path_factory):
    """A fetch-weights style folder: DIR/biomedclip/{open_clip_config.json, .bin}."""
    root = tmp_path_factory.mktemp("weights")
    model = save_open_clip(root / "biomedclip", seed=0)
    return root, model


def pretrained_cfg(weights: Path | None) -> AppConfig:
    return AppConfig(model=ModelConfig(backbone="biomedclip",
                                       backbone_weights=str(weights) if weights else None))


def images(b: int, s: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, s, 3, SIZE, SIZE, generator=g)


def full(b: int, s: int) -> torch.Tensor:
    return torch.ones(b, s, dtype=torch.bool)


# --- backbone loading ----------------------------------------------------------------------

def test_open_clip_folder_is_loadable_by_open_clip(open_clip_dir):
    """The fixture really is open_clip's on-disk format."""
    import open_clip

    root, model = open_clip_dir
    reloaded = open_clip.create_model("local-dir:" + str(root / "biomedclip")).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    assert torch.equal(reloaded.visual.trunk(x), model.visual.trunk(x))


@pytest.mark.parametrize("how", ["folder", "parent", "file", "env"])
def test_open_clip_checkpoint_gives_identical_embeddings(open_clip_dir, monkeypatch, how):
    root, model = open_clip_dir
    weights = {"folder": root / "biomedclip", "parent": root,
               "file": root / "biomedclip" / "open_clip_pytorch_model.bin", "env": None}[how]
    if how == "env":
        monkeypatch.setenv(WEIGHTS_ENV, str(root))
    backbone = build_backbone(pretrained_cfg(weights).model).eval()
    x = torch.randn(3, 3, SIZE, SIZE)
    assert torch.equal(backbone(x), model.visual.trunk(x))
    info = backbone.info
    assert info.pretrained and info.name == "biomedclip" and info.timm_model == "vit_tiny_patch16_224"
    assert (info.embed_dim, info.depth, len(info.sha256)) == (192, 12, 64)


def test_safetensors_and_bin_give_same_weights_and_hash(open_clip_dir, tmp_path):
    root, _ = open_clip_dir
    save_open_clip(tmp_path / "st", seed=0, fmt="safetensors")
    a = build_backbone(pretrained_cfg(root).model)
    b = build_backbone(pretrained_cfg(tmp_path / "st").model)
    assert a.info.sha256 == b.info.sha256
    x = torch.randn(1, 3, SIZE, SIZE)
    assert torch.equal(a.eval()(x), b.eval()(x))


def test_hugging_face_cache_is_read_offline(open_clip_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants

    root, model = open_clip_dir
    repo = tmp_path / "models--microsoft--BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    for f in (root / "biomedclip").iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    backbone = build_backbone(pretrained_cfg(None).model).eval()
    assert "snapshots" in backbone.info.source
    x = torch.randn(1, 3, SIZE, SIZE)
    assert torch.equal(backbone(x), model.visual.trunk(x))


def test_random_backbone_warning_is_logged_once_per_message(caplog):
    """A group run builds and loads test networks dozens of times; each warning shows once."""
    from bids_amyloid.models.backbone import warn_random_once

    for _ in range(3):
        warn_random_once("test-only message A")
    warn_random_once("test-only message B")
    assert caplog.text.count("test-only message A") == 1
    assert caplog.text.count("test-only message B") == 1


def test_missing_weights_error_says_how_to_provide_them():
    with pytest.raises(BackboneWeightsError) as err:
        build_backbone(pretrained_cfg(None).model)
    text = str(err.value)
    for hint in ("bids-amyloid-fetch-weights", WEIGHTS_ENV, "--backbone-weights", "vit_tiny_patch16_224"):
        assert hint in text
    assert err.value.exit_code == 66


def test_missing_path_and_empty_folder_are_named(tmp_path):
    with pytest.raises(BackboneWeightsError, match="does-not-exist"):
        build_backbone(pretrained_cfg(tmp_path / "does-not-exist").model)
    with pytest.raises(BackboneWeightsError, match="holds no backbone weights"):
        build_backbone(pretrained_cfg(tmp_path).model)


def test_weights_of_another_architecture_are_refused(tmp_path):
    folder = tmp_path / "w"
    save_open_clip(folder, seed=0)
    cfg_path = folder / "open_clip_config.json"
    data = json.loads(cfg_path.read_text())
    data["model_cfg"]["vision_cfg"]["timm_model_name"] = "vit_small_patch16_224"
    cfg_path.write_text(json.dumps(data))
    with pytest.raises(BackboneWeightsError, match="do not fit timm 'vit_small_patch16_224'"):
        build_backbone(pretrained_cfg(folder).model)


def test_pickled_weights_file_is_refused(tmp_path):
    folder = tmp_path / "w"
    folder.mkdir()
    marker = tmp_path / "ran"
    torch.save({"visual.trunk.x": Exploit(marker)}, folder / "open_clip_pytorch_model.bin")
    with pytest.raises(BackboneWeightsError, match="pickled"):
        build_backbone(pretrained_cfg(folder).model)
    assert not marker.exists()


def test_random_backbone_is_labelled():
    backbone = build_backbone(TINY.model)
    assert not backbone.info.pretrained and backbone.info.source == "random initialisation"


# --- LoRA ----------------------------------------------------------------------------------

def test_lora_on_vit_b16_has_1179648_parameters():
    trunk = create_trunk("vit_base_patch16_224", 224, device="meta")
    assert apply_lora(trunk, ModelConfig()) == (6, 7, 8, 9, 10, 11)
    trainable = [(n, p) for n, p in trunk.named_parameters() if p.requires_grad]
    # by hand: 6 blocks × 4 adapters (q, k, v, out) × r·(in + out) = 6·4·32·(768 + 768)
    assert sum(p.numel() for _, p in trainable) == 6 * 4 * 32 * (768 + 768) == 1_179_648
    assert all("lora_" in n for n, _ in trainable)
    adapters = {n.rsplit(".", 1)[0].replace("lora_A", "*").replace("lora_B", "*")
                for n, _ in trainable}
    assert adapters == {f"blocks.{b}.attn.{t}.*.{part}" for b in range(6, 12)
                        for t, part in [("qkv", "q"), ("qkv", "k"), ("qkv", "v"), ("proj", "out")]}
    qkv = trunk.blocks[6].attn.qkv
    assert {tuple(qkv.lora_A[p].weight.shape) for p in "qkv"} == {(32, 768)}
    assert {tuple(qkv.lora_B[p].weight.shape) for p in "qkv"} == {(768, 32)}


def _adapted_trunk(seed: int = 0) -> torch.nn.Module:
    """test_vit with LoRA whose B matrices are non-zero (as after training), in eval mode."""
    torch.manual_seed(seed)
    trunk = create_trunk("test_vit", SIZE)
    apply_lora(trunk, TINY.model)
    with torch.no_grad():
        for p in lora_parameters(trunk):
            p.copy_(0.05 * torch.randn_like(p))
    return trunk.eval()


def test_each_qkv_adapter_changes_only_its_slice():
    trunk = _adapted_trunk()
    qkv = trunk.blocks[3].attn.qkv
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        for p in "kv":
            qkv.lora_B[p].weight.zero_()
        delta = qkv(x) - qkv.base_layer(x)
    assert delta[..., :64].abs().max() > 1e-3                  # q moved
    assert torch.equal(delta[..., 64:], torch.zeros_like(delta[..., 64:]))   # k and v did not


def test_merged_lora_gives_the_same_outputs():
    from bids_amyloid.models.lora import base_state_dict, merged_state_dict

    trunk = _adapted_trunk()
    plain = create_trunk("test_vit", SIZE).eval()
    merged = merged_state_dict(trunk)
    plain.load_state_dict(merged, strict=True)
    assert not torch.equal(merged["blocks.3.attn.qkv.weight"],
                           base_state_dict(trunk)["blocks.3.attn.qkv.weight"])
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        adapted, reference = trunk(x), plain(x)
        plain.load_state_dict(base_state_dict(trunk), strict=True)
        unadapted = plain(x)
    torch.testing.assert_close(adapted, reference, rtol=1e-5, atol=1e-5)
    assert (adapted - unadapted).abs().max() > 1e-3            # the adapters do something


def test_small_vit_gets_lora_on_its_last_half():
    assert lora_block_indices(6, (6, 7, 8, 9, 10, 11)) == (3, 4, 5)
    assert lora_block_indices(12, (6, 7, 8, 9, 10, 11)) == (6, 7, 8, 9, 10, 11)
    assert build_student(TINY, ("T1w",)).backbone.lora_blocks == (3, 4, 5)


def test_frozen_parameters_get_no_gradient():
    torch.manual_seed(0)
    model = build_student(TINY, ("T1w",)).train()
    out = model({"T1w": images(2, 2)}, {"T1w": full(2, 2)})
    out.logit.sum().backward()
    groups = model.param_groups()
    trainable = {id(p) for ps in groups.values() for p in ps}
    for name, p in model.named_parameters():
        if id(p) not in trainable:
            assert not p.requires_grad and p.grad is None, name
    lora_b = [p for n, p in model.backbone.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)
    assert all(p.grad is not None for p in groups["projection"] + groups["classifier"])


def test_param_groups_partition_the_trainable_parameters():
    model = build_teacher(TINY, ("T1w", "T2w"))
    groups = model.param_groups()
    assert set(groups) == {"lora", "projection", "attention", "classifier"}
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert sum(p.numel() for p in groups["lora"]) == sum(p.numel() for p in lora_parameters(model))
    assert any(p is model.contrast_embedding for p in groups["attention"])


# --- networks: shapes, masks, contrasts ------------------------------------------------------

def test_teacher_shapes_and_pet_embedding():
    model = build_teacher(TINY, ("T1w", "FLAIR")).eval()
    mri = {"T1w": images(2, 3, 1), "FLAIR": images(2, 2, 2)}
    mask = {"T1w": full(2, 3), "FLAIR": full(2, 2)}
    with torch.no_grad():
        out = model(mri, mask, images(2, 4, 3), full(2, 4))
        pet_emb = model.encode_pet(images(2, 4, 3), full(2, 4))
    assert out.logit.shape == (2,) and out.embedding.shape == (2, 128)
    assert out.pool_weights.shape == (2, 4)
    assert pet_emb.shape == (2, 128) and not torch.allclose(pet_emb, out.embedding)


def test_forward_triplet_matches_separate_calls():
    model = build_teacher(TINY, ("T1w",)).eval()
    mri, mmask = {"T1w": images(2, 3, 1)}, {"T1w": full(2, 3)}
    pet, neg = images(2, 3, 2), images(2, 3, 3)
    pmask = torch.tensor([[True, True, False], [True, True, True]])
    with torch.no_grad():
        trip = model.forward_triplet(mri, mmask, pet, pmask, neg, full(2, 3))
        anchor = model(mri, mmask, pet, pmask)
        pos, negative = model.encode_pet(pet, pmask), model.encode_pet(neg, full(2, 3))
    torch.testing.assert_close(trip.anchor.logit, anchor.logit)
    torch.testing.assert_close(trip.positive, pos)
    torch.testing.assert_close(trip.negative, negative)


def test_padding_slices_do_not_change_outputs():
    torch.manual_seed(0)
    student = build_student(TINY, ("T1w", "T2w")).eval()
    teacher = build_teacher(TINY, ("T1w",)).eval()
    x, pet = images(2, 4, 1), images(2, 4, 2)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    noisy, noisy_pet = x.clone(), pet.clone()
    noisy[0, 2:] = float("nan")
    noisy_pet[0, 2:] = 1e4
    longer = torch.cat([x, images(2, 3, 9)], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(2, 3, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        ref = student({"T1w": x}, {"T1w": mask})
        a = student({"T1w": noisy}, {"T1w": mask})
        b = student({"T1w": longer}, {"T1w": longer_mask})
        t_ref = teacher({"T1w": x}, {"T1w": mask}, pet, mask)
        t_noisy = teacher({"T1w": noisy}, {"T1w": mask}, noisy_pet, mask)
    torch.testing.assert_close(a.logit, ref.logit, rtol=0, atol=1e-6)
    torch.testing.assert_close(b.logit, ref.logit, rtol=0, atol=1e-6)
    torch.testing.assert_close(t_noisy.embedding, t_ref.embedding, rtol=0, atol=1e-6)
    assert torch.all(a.pool_weights[0, 2:] == 0)
    # the second session's real slices do count
    changed = x.clone()
    changed[1, 3] = 0
    with torch.no_grad():
        c = student({"T1w": changed}, {"T1w": mask})
    assert not torch.allclose(c.logit[1], ref.logit[1])


def test_unpadded_and_padded_batches_agree():
    """The no-padding shortcut and the masked selection encode the same slices alike."""
    model = build_teacher(TINY, ("T1w",)).eval()
    x, pet = images(2, 3, 1), images(2, 3, 2)
    pad = torch.zeros(2, 1, 3, SIZE, SIZE)
    padded_mask = torch.cat([full(2, 3), torch.zeros(2, 1, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        plain = model({"T1w": x}, {"T1w": full(2, 3)}, pet, full(2, 3))
        padded = model({"T1w": torch.cat([x, pad], 1)}, {"T1w": padded_mask}, pet, full(2, 3))
    torch.testing.assert_close(padded.logit, plain.logit, rtol=0, atol=1e-6)
    torch.testing.assert_close(padded.embedding, plain.embedding, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_student_accepts_every_subset_of_its_contrasts(n):
    contrasts = ("T1w", "T2w", "FLAIR", "T2starw")[:n]
    model = build_student(TINY, contrasts).eval()
    with torch.no_grad():
        for k in range(1, n + 1):
            sub = contrasts[-k:]
            out = model({c: images(2, 2, i) for i, c in enumerate(sub)}, {c: full(2, 2) for c in sub})
            assert out.logit.shape == (2,) and out.embedding.shape == (2, 128)
            assert torch.isfinite(out.logit).all()


def test_contrast_without_real_slices_counts_as_missing():
    model = build_student(TINY, ("T1w", "T2w")).eval()
    with torch.no_grad():
        model.contrast_embedding.normal_()
    t1, t2 = images(2, 3, 1), images(2, 3, 2)
    t2_mask = torch.tensor([[False, False, False], [True, True, True]])
    with torch.no_grad():
        both = model({"T1w": t1, "T2w": t2}, {"T1w": full(2, 3), "T2w": t2_mask})
        t1_only = model({"T1w": t1}, {"T1w": full(2, 3)})
    torch.testing.assert_close(both.logit[0], t1_only.logit[0], rtol=0, atol=1e-6)
    assert not torch.allclose(both.logit[1], t1_only.logit[1])


def test_bad_inputs_are_clear_errors():
    model = build_student(TINY, ("T1w",)).eval()
    x = images(2, 2)
    with pytest.raises(ValueError, match="takes contrasts"):
        model({"FLAIR": x}, {"FLAIR": full(2, 2)})
    with pytest.raises(ValueError, match=r"batch item\(s\) \[1\] have no real slice"):
        model({"T1w": x}, {"T1w": torch.tensor([[True, False], [False, False]])})
    with pytest.raises(ValueError, match="expected"):
        model({"T1w": torch.zeros(2, 2, 3, 32, 32)}, {"T1w": full(2, 2)})
    with pytest.raises(ValueError, match="bool"):
        model({"T1w": x}, {"T1w": torch.ones(2, 2)})
    with pytest.raises(ValueError, match="contrasts"):
        build_student(TINY, ("T1", "T1w"))


def test_drop_contrasts_keeps_one_contrast_per_session():
    names = ("T1w", "T2w", "FLAIR")
    mask = {c: full(64, 2) for c in names}
    mask["FLAIR"][:32] = False  # FLAIR missing in half of the sessions
    mri = {c: torch.zeros(64, 2) for c in names}
    g = torch.Generator().manual_seed(0)
    _, kept = drop_contrasts(mri, mask, 1.0, g)
    counts = torch.stack([kept[c].any(1) for c in names], 1).sum(1)
    assert torch.all(counts == 1)
    assert not kept["FLAIR"][:32].any()  # never resurrects a missing contrast
    _, same = drop_contrasts(mri, mask, 0.0, g)
    assert all(torch.equal(same[c], mask[c]) for c in names)
    _, half = drop_contrasts(mri, mask, 0.5, torch.Generator().manual_seed(1))
    _, again = drop_contrasts(mri, mask, 0.5, torch.Generator().manual_seed(1))
    present = torch.stack([half[c].any(1) for c in names], 1)
    assert present.any(1).all() and 0 < present.float().mean() < 1
    assert all(torch.equal(half[c], again[c]) for c in names)


def test_init_from_teacher_copies_and_reinitialises_last_layer():
    torch.manual_seed(0)
    teacher = build_teacher(TINY, ("T1w", "T2w"))
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.01 * torch.randn_like(p))
    student = build_student(TINY, ("T1w",))
    student.init_from_teacher(teacher)
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for key, value in s_state.items():
        if key.startswith(("backbone.", "projection.", "self_attn.", "classifier.0.")):
            assert torch.equal(value, t_state[key]), key
    assert torch.equal(student.contrast_embedding[0], teacher.contrast_embedding[0])
    assert not torch.equal(student.classifier[-1].weight, teacher.classifier[-1].weight)
    assert torch.all(student.classifier[-1].bias == 0)
    assert student.backbone.info == teacher.backbone.info
    bound = 0.5 * (6 / (64 + 1)) ** 0.5  # Xavier-uniform bound, gain 0.5, 64 → 1
    assert student.classifier[-1].weight.abs().max() <= bound


def test_reinit_layers_all_also_redraws_the_first_classifier_layer():
    """[distill] reinit_layers = "all": the student's first classifier layer is a fresh
    Xavier draw (bias 0, within the bound for 128 → 64), not the teacher's."""
    torch.manual_seed(0)
    teacher = build_teacher(TINY, ("T1w",))
    with torch.no_grad():
        for p in teacher.classifier.parameters():
            p.add_(0.5)  # a teacher layer no Xavier draw can equal, bias non-zero
    cfg = dataclasses.replace(TINY, distill=dataclasses.replace(TINY.distill, reinit_layers="all"))
    student = build_student(cfg, ("T1w",))
    student.init_from_teacher(teacher)
    first = student.classifier[0]
    assert not torch.equal(first.weight, teacher.classifier[0].weight)
    assert torch.all(first.bias == 0)
    assert first.weight.abs().max() <= (6 / (128 + 64)) ** 0.5  # Xavier bound, gain 1
    assert torch.equal(student.projection.state_dict()["0.weight"],
                       teacher.projection.state_dict()["0.weight"])
    with pytest.raises(ValueError, match="layers must be one of"):
        student.classifier.reset_for_student(0.5, "first")


def test_works_under_bfloat16_autocast():
    model = build_teacher(TINY, ("T1w",)).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model({"T1w": images(1, 2)}, {"T1w": full(1, 2)}, images(1, 2, 1), full(1, 2))
    assert torch.isfinite(out.logit.float()).all()


def test_prepare_slices():
    arr = np.full((2, 5, 8, 8), 0.5, dtype=np.float16)
    x = prepare_slices(arr)
    assert x.shape == (2, 5, 3, 8, 8) and x.dtype == torch.float32
    expected = [(0.5 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)]
    torch.testing.assert_close(x[0, 0, :, 0, 0], torch.tensor(expected))
    u8 = prepare_slices(np.full((1, 4, 4), 255, dtype=np.uint8))
    torch.testing.assert_close(u8[0, :, 0, 0], prepare_slices(np.ones((1, 1, 1)))[0, :, 0, 0])
    assert prepare_slices(torch.rand(3, 10, 10), size=16).shape == (3, 3, 16, 16)
    with pytest.raises(TypeError):
        prepare_slices(np.ones((2, 2), dtype=np.int64))


# --- model files ---------------------------------------------------------------------------

class Exploit:
    """Unpickling this creates ``marker``: the code a malicious model file would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def run_both(model, seed: int = 0):
    mri, mask = {"T1w": images(2, 3, seed)}, {"T1w": torch.tensor([[1, 1, 0], [1, 1, 1]]).bool()}
    with torch.no_grad():
        if model.role == "teacher":
            return model(mri, mask, images(2, 3, seed + 1), full(2, 3))
        return model(mri, mask)


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_round_trip_reproduces_outputs_exactly(tmp_path, role):
    torch.manual_seed(0)
    model = (build_teacher if role == "teacher" else build_student)(TINY, ("T1w",))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.eval()
    meta = {"thresholds": {"0.5": 0.5, "tau": 0.37}, "training_participants": ["sub-01", "sub-02"]}
    path = save_model(tmp_path / f"{role}.pt", model, TINY, meta)
    loaded, cfg, meta2 = load_model(path)
    assert loaded.role == role and loaded.contrasts == ("T1w",) and not loaded.training
    assert cfg == TINY and meta2 == meta
    assert torch.equal(run_both(loaded).logit, run_both(model).logit)
    assert torch.equal(run_both(loaded).embedding, run_both(model).embedding)
    payload = read_model_file(path)
    assert payload["backbone"]["pretrained"] is False
    assert payload["versions"]["torch"] == torch.__version__
    assert not list(tmp_path.glob(".tmp-*"))


def test_pretrained_model_file_omits_backbone_and_checks_its_hash(open_clip_dir, tmp_path):
    root, _ = open_clip_dir
    cfg = pretrained_cfg(root)
    torch.manual_seed(0)
    model = build_student(cfg, ("T1w",))
    with torch.no_grad():
        for p in model.param_groups()["lora"]:
            p.add_(0.01 * torch.randn_like(p))
    model.eval()
    path = save_model(tmp_path / "student_T1w.pt", model, cfg, {})
    state = read_model_file(path)["state_dict"]
    assert any("lora_" in k for k in state)
    assert not [k for k in state if k.startswith("backbone.") and "lora_" not in k]
    loaded, _, _ = load_model(path, backbone_weights=root / "biomedclip")
    assert torch.equal(run_both(loaded).logit, run_both(model).logit)

    other = tmp_path / "other"
    save_open_clip(other, seed=1)
    with pytest.raises(ModelFileError, match="SHA-256") as err:
        load_model(path, backbone_weights=other)
    assert model.backbone.info.sha256 in str(err.value)

    moved = tmp_path / "moved.pt"
    payload = read_model_file(path)
    payload["config"]["model"]["backbone_weights"] = str(tmp_path / "gone")
    torch.save(payload, moved)
    with pytest.raises(BackboneWeightsError, match="bids-amyloid-fetch-weights"):
        load_model(moved)


def test_malicious_model_file_is_refused_without_running_code(tmp_path):
    good = save_model(tmp_path / "good.pt", build_student(TINY, ("T1w",)), TINY, {})
    payload = read_model_file(good)
    marker = tmp_path / "pwned"
    payload["meta"] = {"note": Exploit(marker)}
    evil = tmp_path / "evil.pt"
    torch.save(payload, evil)
    with pytest.raises(ModelFileError, match="refused to load") as err:
        load_model(evil)
    assert not marker.exists()
    assert "pickled Python objects" in str(err.value) and err.value.exit_code == 66
    # the payload is real: plain unpickling runs it
    with open(evil, "rb"):
        torch.load(evil, weights_only=False)
    assert marker.read_text() == "pwned"


def test_other_bad_model_files(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "nope.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ModelFileError, match="not a readable model file"):
        load_model(tmp_path / "text.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(ModelFileError, match="not a bids-amyloid model file"):
        load_model(tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="JSON"):
        save_model(tmp_path / "m.pt", build_student(TINY, ("T1w",)), TINY, {"x": object()})
    payload = read_model_file(save_model(tmp_path / "new.pt", build_student(TINY, ("T1w",)),
                                         TINY, {}))
    torch.save({**payload, "format_version": 1}, tmp_path / "old.pt")   # one adapter on qkv
    with pytest.raises(ModelFileError, match=r"older bids-amyloid.*train the model again"):
        load_model(tmp_path / "old.pt")
    assert not (tmp_path / "m.pt").exists()


def test_corrupted_random_backbone_is_detected(tmp_path):
    path = save_model(tmp_path / "m.pt", build_student(TINY, ("T1w",)), TINY, {})
    payload = read_model_file(path)
    payload["state_dict"]["backbone.trunk.cls_token"] += 1
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(ModelFileError, match="SHA-256"):
        load_model(tmp_path / "bad.pt")


def test_model_file_records_config_and_identity(tmp_path):
    cfg = dataclasses.replace(TINY, cohort=dataclasses.replace(TINY.cohort, contrasts=("T1w", "T2w")))
    path = save_model(tmp_path / "t.pt", build_teacher(cfg, ("T1w", "T2w")), cfg, {"k": 1})
    payload = read_model_file(path)
    assert payload["role"] == "teacher" and payload["contrasts"] == ["T1w", "T2w"]
    assert payload["config"]["cohort"]["contrasts"] == ["T1w", "T2w"]
    assert payload["backbone"]["name"] == "test_vit" and payload["lora_blocks"] == [3, 4, 5]
    assert {"bids-amyloid", "torch", "timm"} <= set(payload["versions"])


def test_benchmark_script_runs(capsys):
    import runpy

    bench = runpy.run_path(str(Path(__file__).parents[1] / "benchmarks" / "models.py"))
    bench["main"](["--backbones", "test_vit", "--roles", "student", "--batch", "1", "--slices", "2",
                   "--iters", "1", "--warmup", "0"])
    lines = capsys.readouterr().out.splitlines()
    rows = [ln.split() for ln in lines if ln.startswith("test_vit")]
    assert [r[2] for r in rows] == ["forward", "fwd+bwd"]
    assert all(float(r[5]) > 0 and float(r[7]) > 0 for r in rows)  # slices/s, GFLOP/s
