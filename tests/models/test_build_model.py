import pytest
import torch
from omegaconf import OmegaConf

from dinov2.configs import dinov2_default_config
from dinov2.models import build_model, build_model_from_cfg, vision_transformer


def tiny_arch(patch_size=16, num_register_tokens=0, **kwargs):
    return vision_transformer.DinoVisionTransformer(
        patch_size=patch_size, embed_dim=32, depth=2, num_heads=2, num_register_tokens=num_register_tokens, **kwargs
    )


@pytest.fixture
def cfg(monkeypatch):
    monkeypatch.setattr(vision_transformer, "vit_test", tiny_arch, raising=False)
    cfg = OmegaConf.create(dinov2_default_config)
    cfg.student.arch = "vit_test"
    cfg.student.patch_size = 7
    cfg.student.drop_path_rate = 0.2
    cfg.student.num_register_tokens = 1
    cfg.crops.global_crops_size = 28
    return cfg


def test_registered_arch_builds_student_and_teacher(cfg):
    student, teacher, embed_dim = build_model_from_cfg(cfg)
    assert embed_dim == 32
    assert student.patch_embed.num_patches == 16 and student.num_register_tokens == 1
    assert [block.sample_drop_ratio for block in student.blocks] == [0.2, 0.2]  # drop_path_uniform: true
    assert [block.sample_drop_ratio for block in teacher.blocks] == [0.0, 0.0]
    assert student.blocks[0].ls1.gamma[0].item() == pytest.approx(cfg.student.layerscale)
    assert set(student.state_dict()) == set(teacher.state_dict())

    teacher_only, dim = build_model_from_cfg(cfg, only_teacher=True)
    assert dim == 32 and teacher_only.blocks[0].sample_drop_ratio == 0.0


def test_memeff_suffix_is_accepted(cfg):
    cfg.student.arch = "vit_test_memeff"
    _, teacher, _ = build_model(cfg.student, img_size=28)
    assert teacher.embed_dim == 32


def test_unknown_arch_lists_the_known_ones(cfg):
    cfg.student.arch = "vit_nonexistent"
    with pytest.raises(ValueError, match="vit_nonexistent.*vit_small"):
        build_model(cfg.student, img_size=28)


def test_global_crop_size_must_be_a_multiple_of_the_patch(cfg):
    cfg.crops.global_crops_size = 30
    with pytest.raises(ValueError, match="30.*7"):
        build_model_from_cfg(cfg)


def test_demo_arch_builds_from_config_name():
    from dinov2.models import build_model_from_cfg
    from dinov2.utils.config import merge_config

    cfg = merge_config(None, ["student.arch=vit_demo", "student.patch_size=16", "crops.global_crops_size=64", "crops.local_crops_size=32"])
    student, teacher, embed_dim = build_model_from_cfg(cfg)
    assert embed_dim == 192 and student.n_blocks == 4
    out = teacher.forward_features(torch.randn(2, 3, 64, 64))
    assert out["x_norm_patchtokens"].shape == (2, 16, 192)
