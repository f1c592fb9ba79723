"""scripts/pretrain_backbone.py: plain DINOv2 pretraining through the trainer, weights in the public layout."""

import importlib.util
import os

import pytest
import torch

from dinov2.models.vision_transformer import vit_demo
from dinov2.train import ssl_meta_arch
from dinov2.utils.config import merge_config

from ..conftest import synthetic_multicrop_batch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def pretrain():
    spec = importlib.util.spec_from_file_location("pretrain_backbone", os.path.join(REPO, "scripts", "pretrain_backbone.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_saved_weights_have_the_public_names_and_a_larger_pos_embed(pretrain, tmp_path):
    backbone = vit_demo(patch_size=16, img_size=64, init_values=0.1, block_chunks=0)
    teacher = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    teacher["dino_head.last_layer.weight"] = torch.zeros(4, 4)
    state = pretrain.backbone_state_dict(teacher, save_size=128)
    assert set(state) == set(backbone.state_dict())
    assert state["pos_embed"].shape == (1, 1 + 8 * 8, 192)
    assert torch.equal(state["blocks.0.attn.qkv.weight"], backbone.state_dict()["blocks.0.attn.qkv.weight"])
    path = str(tmp_path / "w.pth")
    torch.save(state, path)
    checked = pretrain.check_weights(path, save_size=128, crop_size=64)
    assert "strict load" in checked[0] and "no missing or unexpected key" in checked[1]


def test_weights_of_another_shape_fail_the_check(pretrain, tmp_path):
    state = vit_demo(patch_size=16, img_size=64, init_values=0.1, block_chunks=0).state_dict()
    del state["norm.weight"]
    path = str(tmp_path / "w.pth")
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="norm.weight"):
        pretrain.check_weights(path, save_size=64, crop_size=64)


def test_the_plain_head_makes_the_trainer_distil_the_cls_token(pretrain, monkeypatch):
    monkeypatch.setattr(ssl_meta_arch, "build_hash_head", pretrain._plain_head)
    cfg = merge_config(
        os.path.join(REPO, "configs", "pretrain_demo.yaml"),
        ["crops.global_crops_size=32", "crops.local_crops_size=16", "dino.head_n_prototypes=64",
         "ibot.head_n_prototypes=64", "ibot.mask_sample_probability=1.0"],
    )  # fmt: skip
    model = ssl_meta_arch.SSLMetaArch(cfg)
    assert isinstance(model.student.hash_head, pretrain.ClsTokenHead)
    assert list(model.student.hash_head.parameters()) == []
    model.train()
    batch = synthetic_multicrop_batch(32, 16, 2, 16, 4, 0, torch.float32, (0.1, 0.5), 1.0)
    losses = model.forward_backward(batch, teacher_temp=0.04)
    assert {"dino_global_crops_loss", "ibot_loss", "koleo_loss"} <= set(losses)
    assert "hash_reg_loss" not in losses and "contrastive_loss" not in losses
    assert model.student.backbone.cls_token.grad is not None
    assert model.student.dino_head.mlp[0].weight.shape[1] == 192


def test_the_plain_head_refuses_a_code_length_other_than_the_width(pretrain):
    cfg = merge_config(os.path.join(REPO, "configs", "pretrain_demo.yaml"), ["hash.hash_bit=32"])
    with pytest.raises(ValueError, match="192"):
        pretrain._plain_head(cfg, 192)
