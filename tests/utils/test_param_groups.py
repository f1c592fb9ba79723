import pytest
import torch
from torch import nn

from dinov2.utils.param_groups import (
    clean_param_name,
    fuse_params_groups,
    get_params_groups_with_decay,
    get_vit_lr_decay_rate,
)


class TinyBackbone(nn.Module):
    """Parameter names of a ViT without the maths: embeddings, two blocks, final norm."""

    def __init__(self, chunked=False):
        super().__init__()
        self.n_blocks = 2
        self.chunked_blocks = chunked
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 4))
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Linear(4, 4)
        blocks = [nn.ModuleDict({"attn": nn.Linear(4, 4), "norm1": nn.LayerNorm(4)}) for _ in range(2)]
        for b in blocks:
            b.ls1 = nn.Module()
            b.ls1.gamma = nn.Parameter(torch.ones(4))
        if chunked:
            self.blocks = nn.ModuleList([nn.ModuleList(blocks)])
        else:
            self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(4)


def _by_name(groups):
    return {g["name"]: g for g in groups}


@pytest.mark.parametrize("chunked", [False, True])
def test_layerwise_decay_and_multipliers(chunked):
    groups = _by_name(get_params_groups_with_decay(TinyBackbone(chunked), lr_decay_rate=0.5, patch_embed_lr_mult=0.2))
    prefix = "blocks.0." if chunked else "blocks."
    # 2 blocks -> layers: embeddings 0, block i -> i + 1, norm 3; multiplier 0.5 ** (3 - layer).
    assert groups["cls_token"]["lr_multiplier"] == pytest.approx(0.5**3)
    assert groups["patch_embed.proj.weight"]["lr_multiplier"] == pytest.approx(0.5**3 * 0.2)
    assert groups[prefix + "0.attn.weight"]["lr_multiplier"] == pytest.approx(0.5**2)
    assert groups[prefix + "1.attn.weight"]["lr_multiplier"] == pytest.approx(0.5**1)
    assert groups["norm.weight"]["lr_multiplier"] == pytest.approx(1.0)
    # No weight decay on biases, norms and LayerScale gammas.
    assert groups[prefix + "0.attn.weight"]["wd_multiplier"] == 1.0
    assert groups[prefix + "0.attn.bias"]["wd_multiplier"] == 0.0
    assert groups[prefix + "0.norm1.weight"]["wd_multiplier"] == 0.0
    assert groups[prefix + "1.ls1.gamma"]["wd_multiplier"] == 0.0
    assert groups["norm.weight"]["wd_multiplier"] == 0.0


def test_fsdp_prefixed_names_get_the_same_decay():
    plain = get_vit_lr_decay_rate("blocks.0.attn.weight", 0.9, 12)
    wrapped = get_vit_lr_decay_rate("_fsdp_wrapped_module.blocks.0.attn.weight", 0.9, 12)
    assert plain == wrapped == pytest.approx(0.9**12)
    assert clean_param_name("_fsdp_wrapped_module.pos_embed") == "pos_embed"


def test_heads_have_multiplier_one_and_last_layer_flag():
    head = nn.Sequential()
    head.add_module("mlp", nn.Linear(3, 3))
    head.add_module("last_layer", nn.Linear(3, 3, bias=False))
    groups = _by_name(get_params_groups_with_decay(head, lr_decay_rate=0.5, patch_embed_lr_mult=0.2))
    assert all(g["lr_multiplier"] == 1.0 for g in groups.values())
    assert groups["last_layer.weight"]["is_last_layer"] and not groups["mlp.weight"]["is_last_layer"]


def test_frozen_parameters_are_skipped_and_fusion_keeps_every_parameter():
    model = TinyBackbone()
    model.norm.bias.requires_grad = False
    groups = get_params_groups_with_decay(model, lr_decay_rate=0.5)
    assert "norm.bias" not in _by_name(groups)
    fused = fuse_params_groups(groups)
    assert sum(len(g["params"]) for g in fused) == len(groups)
    keys = {(g["lr_multiplier"], g["wd_multiplier"], g["is_last_layer"]) for g in fused}
    assert len(keys) == len(fused)
