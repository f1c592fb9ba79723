import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dinov2.checkpoint import (
    CheckpointFormatError,
    convert_sdsh_reference_state_dict,
    detect_format,
)
from dinov2.models import build_hashing_network
from dinov2.models import vision_transformer as vits
from dinov2.train.ssl_meta_arch import SSLMetaArch
from dinov2.utils.config import merge_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def fixture_layout(name):
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"fixture {path} not available")
    return json.loads(path.read_text())


def random_state_dict(layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * 0.05 for k, shape in layout.items()}


def reference_codes(sd, backbone_out):
    """The reference SDSH hash computation written directly on the reference keys."""
    c, p = backbone_out["x_norm_clstoken"], backbone_out["x_norm_patchtokens"]
    pre = "backbone.patch_attn_global."
    g = torch.cat([c, p.mean(1)], dim=-1)
    h = F.gelu(F.linear(g, sd[pre + "attention_net.0.weight"], sd[pre + "attention_net.0.bias"]))
    w = torch.sigmoid(F.linear(h, sd[pre + "attention_net.2.weight"], sd[pre + "attention_net.2.bias"]))
    pooled = torch.cat([c, (w.unsqueeze(-1) * p).mean(1)], dim=-1)
    v = F.layer_norm(pooled, (pooled.shape[-1],), sd[pre + "norm.weight"], sd[pre + "norm.bias"], eps=1e-6)
    h = F.gelu(F.linear(v, sd["backbone.hash_layer.0.weight"], sd["backbone.hash_layer.0.bias"]))
    return F.linear(h, sd["backbone.hash_layer.2.weight"], sd["backbone.hash_layer.2.bias"])


def test_reference_teacher_checkpoint_loads_and_gives_its_codes(tmp_path):
    layout = fixture_layout("sdsh_teacher_keys.json")
    sd = random_state_dict(layout)
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save({"teacher": sd, "mAP": 0.9, "iteration": 80}, path)

    cfg = merge_config(None, [])  # reference defaults: vit_small/14, 224/98 crops, 64 bits
    model = build_hashing_network(cfg, str(path))
    assert detect_format(torch.load(path, weights_only=True)) == "sdsh_reference"
    # Every backbone and hash-head tensor of the file lands in the model, unchanged.
    converted = convert_sdsh_reference_state_dict(sd)
    loaded = model.state_dict()
    assert set(loaded) == {k for k in converted if not k.startswith(("dino_head.", "ibot_head."))}
    for key, value in loaded.items():
        assert torch.equal(value, converted[key]), key

    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        codes = model(images)
        expected = reference_codes(sd, model.backbone.forward_features(images))
    assert codes.shape == (2, 64)
    torch.testing.assert_close(codes, expected, rtol=1e-4, atol=1e-5)


def test_reference_checkpoint_with_another_code_length_is_refused(tmp_path):
    sd = random_state_dict(fixture_layout("sdsh_teacher_keys.json"))
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save({"teacher": sd}, path)
    with pytest.raises(CheckpointFormatError, match=r"hash_head\.hash_layer\.2\.weight"):
        build_hashing_network(merge_config(None, ["hash.hash_bit=32"]), str(path))


def test_bare_dinov2_backbone_loads_with_random_hash_head(tmp_path, caplog):
    sd = random_state_dict(fixture_layout("dinov2_vits14_keys.json"))
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(sd, path)
    with caplog.at_level("WARNING", logger="dinov2"):
        model = build_hashing_network(merge_config(None, []), str(path))
    assert "random" in caplog.text
    assert torch.equal(model.backbone.blocks[3].mlp.fc1.weight, sd["blocks.3.mlp.fc1.weight"])
    assert model.backbone.pos_embed.shape == (1, 257, 384)


@pytest.fixture
def tiny_cfg(monkeypatch):
    def vit_test(**kwargs):
        return vits.DinoVisionTransformer(embed_dim=32, depth=1, num_heads=2, **kwargs)

    monkeypatch.setattr(vits, "vit_test", vit_test, raising=False)
    return merge_config(
        None,
        [
            "student.arch=vit_test",
            "student.patch_size=7",
            "crops.global_crops_size=28",
            "crops.local_crops_size=14",
            "hash.hash_bit=16",
            "dino.head_n_prototypes=32",
            "ibot.head_n_prototypes=32",
        ],
    )


@pytest.mark.parametrize("layout", ["training", "teacher"])
def test_own_checkpoints_round_trip(tmp_path, tiny_cfg, layout):
    meta = SSLMetaArch(tiny_cfg)
    with torch.no_grad():
        for p in meta.teacher.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / "ckpt.pth"
    if layout == "training":
        torch.save({"model": meta.state_dict(), "iteration": 3}, path)
    else:
        torch.save({"teacher": meta.teacher.state_dict(), "mAP": 0.5, "iteration": 3}, path)
    model = build_hashing_network(tiny_cfg, str(path))
    images = torch.randn(3, 3, 28, 28)
    with torch.no_grad():
        out = meta.teacher.backbone.forward_features(images)
        expected = meta.teacher.hash_head(out["x_norm_clstoken"], out["x_norm_patchtokens"], "global")["codes"]
        torch.testing.assert_close(model(images), expected)


def test_foreign_and_corrupt_checkpoints_are_named(tmp_path, tiny_cfg):
    foreign = tmp_path / "foreign.pth"
    torch.save({"encoder.weight": torch.zeros(2), "decoder.bias": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointFormatError, match="encoder.weight") as info:
        build_hashing_network(tiny_cfg, str(foreign))
    assert str(foreign) in str(info.value)
    truncated = tmp_path / "truncated.pth"
    torch.save({"teacher": {"backbone.cls_token": torch.zeros(1, 1, 32)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:40])
    with pytest.raises(CheckpointFormatError, match="truncated.pth"):
        build_hashing_network(tiny_cfg, str(truncated))
    with pytest.raises(CheckpointFormatError, match="not found"):
        build_hashing_network(tiny_cfg, str(tmp_path / "missing.pth"))


def test_partial_checkpoint_lists_missing_keys(tmp_path, tiny_cfg):
    meta = SSLMetaArch(tiny_cfg)
    sd = {k: v for k, v in meta.teacher.state_dict().items() if not k.startswith("hash_head.hash_layer.")}
    path = tmp_path / "partial.pth"
    torch.save({"teacher": sd}, path)
    with pytest.raises(CheckpointFormatError, match=r"missing keys: hash_head\.hash_layer\.0\.bias"):
        build_hashing_network(tiny_cfg, str(path))
