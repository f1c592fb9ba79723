import json
import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dinov2.checkpoint import load_pretrained_weights
from dinov2.models.vision_transformer import DinoVisionTransformer, vit_small
from dinov2.utils.utils import CosineScheduler, has_batchnorms

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
VITS14_KEYS = FIXTURES / "dinov2_vits14_keys.json"
needs_fixture = pytest.mark.skipif(not VITS14_KEYS.is_file(), reason="shared fixtures not present")


@pytest.fixture(scope="module")
def public_layout_checkpoint():
    """Random tensors in exactly the layout of dinov2_vits14_pretrain.pth (built for 518 px)."""
    shapes = json.loads(VITS14_KEYS.read_text())
    generator = torch.Generator().manual_seed(0)
    return {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}


def vits14_224():
    return vit_small(patch_size=14, img_size=224, init_values=1e-5, block_chunks=0)


def expected_pos_embed_224(pos_518: torch.Tensor) -> torch.Tensor:
    grid = pos_518[:, 1:].reshape(1, 37, 37, 384).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(16, 16), mode="bicubic", align_corners=False)
    return torch.cat([pos_518[:, :1], grid.permute(0, 2, 3, 1).reshape(1, 256, 384)], dim=1)


def assert_loaded(model, checkpoint):
    state = model.state_dict()
    assert state["pos_embed"].shape == (1, 257, 384)
    torch.testing.assert_close(state["pos_embed"], expected_pos_embed_224(checkpoint["pos_embed"]))
    for key, value in checkpoint.items():
        if key != "pos_embed":
            assert torch.equal(state[key], value), key


@needs_fixture
def test_public_checkpoint_loads_with_interpolated_pos_embed(tmp_path, public_layout_checkpoint):
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(public_layout_checkpoint, path)
    model = vits14_224()
    result = load_pretrained_weights(model, str(path))
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert_loaded(model, public_layout_checkpoint)


@needs_fixture
@pytest.mark.parametrize("wrap", ["teacher_backbone", "model_module"])
def test_nested_and_prefixed_checkpoints(tmp_path, public_layout_checkpoint, wrap):
    if wrap == "teacher_backbone":
        inner = {"backbone." + k: v for k, v in public_layout_checkpoint.items()}
        inner["dino_head.mlp.0.weight"] = torch.zeros(2, 2)  # another module: ignored
        checkpoint = {"teacher": inner}
    else:
        checkpoint = {"model": {"module." + k: v for k, v in public_layout_checkpoint.items()}, "iteration": 3}
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)
    model = vits14_224()
    result = load_pretrained_weights(model, path)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert_loaded(model, public_layout_checkpoint)


@needs_fixture
def test_other_architecture_is_refused_naming_a_key(tmp_path):
    widths = {384: 768, 1152: 2304, 1536: 3072}  # vit_base/14 widths
    shapes = json.loads(VITS14_KEYS.read_text())
    checkpoint = {k: torch.zeros([widths.get(d, d) for d in shape]) for k, shape in shapes.items()}
    path = tmp_path / "vitb14.pth"
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=r"vitb14\.pth.*blocks\.0\.attn\.qkv\.weight: checkpoint \[2304, 768\]"):
        load_pretrained_weights(vits14_224(), path)


def tiny_vit(img_size=28):
    torch.manual_seed(0)
    return DinoVisionTransformer(img_size=img_size, patch_size=7, embed_dim=32, depth=1, num_heads=2, block_chunks=0)


def test_checkpoint_matching_nothing_is_an_error(tmp_path):
    path = tmp_path / "foreign.pth"
    torch.save({"encoder.layer1.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match=r"foreign\.pth.*encoder\.layer1\.weight"):
        load_pretrained_weights(tiny_vit(), path)


def test_missing_and_unreadable_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_pretrained_weights(tiny_vit(), tmp_path / "absent.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="corrupt.pth"):
        load_pretrained_weights(tiny_vit(), corrupt)


def test_partial_checkpoint_reports_missing_and_unexpected_keys_by_name(tmp_path, caplog):
    source = tiny_vit(img_size=42).state_dict()  # 6x6 grid, loaded into a 4x4 model
    del source["norm.weight"]
    source["extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pth"
    torch.save({"student": {"backbone." + k: v for k, v in source.items()}}, path)
    model = tiny_vit()
    with caplog.at_level(logging.INFO, logger="dinov2"):
        result = load_pretrained_weights(model, path)
    assert result.missing_keys == ["norm.weight"] and result.unexpected_keys == ["extra.weight"]
    assert "norm.weight" in caplog.text and "extra.weight" in caplog.text
    assert model.pos_embed.shape == (1, 17, 32)


def test_full_training_state_uses_teacher_backbone(tmp_path):
    teacher, student = tiny_vit().state_dict(), {k: v + 1 for k, v in tiny_vit().state_dict().items()}
    state = {f"teacher.backbone.{k}": v for k, v in teacher.items()}
    state.update({f"student.backbone.{k}": v for k, v in student.items()})
    path = tmp_path / "model_final.pth"
    torch.save({"model": state}, path)
    model = DinoVisionTransformer(img_size=28, patch_size=7, embed_dim=32, depth=1, num_heads=2, block_chunks=0)
    load_pretrained_weights(model, path)
    assert torch.equal(model.blocks[0].attn.qkv.weight, teacher["blocks.0.attn.qkv.weight"])


def test_explicit_checkpoint_key(tmp_path):
    source = tiny_vit().state_dict()
    path = tmp_path / "keyed.pth"
    torch.save({"ema": source, "model": {k: torch.zeros_like(v) for k, v in source.items()}}, path)
    model = tiny_vit()
    with torch.no_grad():
        model.cls_token.zero_()
    load_pretrained_weights(model, path, checkpoint_key="ema")
    assert torch.equal(model.cls_token, source["cls_token"])
    with pytest.raises(ValueError, match="'absent'"):
        load_pretrained_weights(model, path, checkpoint_key="absent")


def test_cosine_scheduler_matches_closed_form():
    base, final, start, total, warmup, freeze = 1.0, 0.1, 0.2, 30, 5, 3
    schedule = CosineScheduler(base, final, total, warmup_iters=warmup, start_warmup_value=start, freeze_iters=freeze)
    assert schedule[0] == 0.0 and schedule[freeze - 1] == 0.0
    for step in range(warmup):
        assert schedule[freeze + step] == pytest.approx(start + (base - start) * step / (warmup - 1))
    cosine_len = total - warmup - freeze
    for step in (0, cosine_len // 2, cosine_len - 1):
        expected = final + 0.5 * (base - final) * (1 + math.cos(math.pi * step / cosine_len))
        assert schedule[freeze + warmup + step] == pytest.approx(expected)
    assert schedule[total] == final and schedule[10 * total] == final
    with pytest.raises(ValueError, match="warmup_iters=40"):
        CosineScheduler(base, final, total, warmup_iters=40)


def test_has_batchnorms():
    assert has_batchnorms(nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.BatchNorm1d(2))))
    assert not has_batchnorms(tiny_vit())
