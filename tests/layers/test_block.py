from functools import partial

import torch
from torch import nn

from dinov2.layers import Attention, Block, Mlp, NestedTensorBlock
from dinov2.layers.block import drop_add_residual_stochastic_depth


def make_block(**kwargs) -> Block:
    torch.manual_seed(0)
    return Block(32, num_heads=4, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), **kwargs)


def test_block_equals_pre_norm_residual_computation():
    block = make_block(init_values=0.3).eval()
    x = torch.randn(2, 5, 32)
    h = x + 0.3 * block.attn(nn.functional.layer_norm(x, (32,), block.norm1.weight, block.norm1.bias, 1e-6))
    expected = h + 0.3 * block.mlp(nn.functional.layer_norm(h, (32,), block.norm2.weight, block.norm2.bias, 1e-6))
    torch.testing.assert_close(block(x), expected)


def test_state_dict_names_match_dinov2():
    names = set(make_block(init_values=1e-5).state_dict())
    assert names == {
        "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
        "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
        "mlp.fc2.bias", "ls2.gamma",
    }  # fmt: skip
    assert not any("gamma" in name for name in make_block(init_values=None).state_dict())
    assert isinstance(make_block().attn, Attention) and isinstance(make_block().mlp, Mlp)


def test_list_input_is_processed_group_by_group():
    block = make_block().eval()
    groups = [torch.randn(2, 5, 32), torch.randn(3, 2, 32)]
    outputs = block(groups)
    assert NestedTensorBlock is Block
    for group, out in zip(groups, outputs):
        torch.testing.assert_close(out, block(group))


def test_batch_subset_residual_leaves_dropped_samples_unchanged():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4)
    out = drop_add_residual_stochastic_depth(x, lambda t: torch.ones_like(t), sample_drop_ratio=0.5)
    changed = ~torch.isclose(out, x).flatten(1).all(dim=1)
    assert int(changed.sum()) == 4  # int(8 * (1 - 0.5)) samples get the residual
    # The kept samples get the residual scaled by 8 / 4.
    torch.testing.assert_close(out[changed], x[changed] + 2.0)


def test_training_with_high_drop_rate_still_trains_every_parameter():
    block = make_block(init_values=1e-5, drop_path=0.5).train()
    x = torch.randn(8, 5, 32)
    block(x).pow(2).sum().backward()
    for name, param in block.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
